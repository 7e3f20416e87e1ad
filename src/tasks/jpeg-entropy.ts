import { OutpostError } from "../core/errors.ts";

// JPEG's entropy coding (ITU T.81 annex C and F.2.2): Huffman tables and the bit reader over a scan.

/** A JPEG that cannot be decoded: the frame's input is refused, named as such. */
export const invalid = (why: string) =>
  new OutpostError("TASK_INPUT_INVALID", `the image does not decode: JPEG ${why}`);

/** A canonical Huffman table: codes of each length, looked up by (length, code). */
export interface Huffman {
  maxcode: Int32Array;
  valptr: Int32Array;
  mincode: Int32Array;
  symbols: Uint8Array;
}

export function huffman(counts: Uint8Array, symbols: Uint8Array): Huffman {
  const maxcode = new Int32Array(18).fill(-1);
  const valptr = new Int32Array(17);
  const mincode = new Int32Array(17);
  let code = 0;
  let k = 0;
  for (let l = 1; l <= 16; l++) {
    const n = counts[l - 1] ?? 0;
    valptr[l] = k;
    mincode[l] = code;
    code += n;
    k += n;
    maxcode[l] = n > 0 ? code - 1 : -1;
    code <<= 1;
  }
  maxcode[17] = 0x7fffffff;
  return { maxcode, valptr, mincode, symbols };
}

/** Reads the entropy-coded data: 0xFF00 is a 0xFF byte; any other marker ends it (zeros are read past it). */
export class Bits {
  pos: number;
  private acc = 0;
  private n = 0;
  marker = false;
  eof = false;
  private readonly d: Buffer;
  constructor(d: Buffer, start: number) {
    this.d = d;
    this.pos = start;
  }

  bit(): number {
    if (this.n === 0) {
      let byte = 0;
      if (this.pos >= this.d.length) this.eof = true;
      else if (!this.marker) {
        byte = this.d[this.pos] ?? 0;
        if (byte === 0xff) {
          const next = this.d[this.pos + 1] ?? 0;
          if (next === 0) this.pos += 2;
          else {
            this.marker = true;
            byte = 0;
          }
        } else this.pos += 1;
      }
      this.acc = byte;
      this.n = 8;
    }
    this.n -= 1;
    return (this.acc >> this.n) & 1;
  }

  bits(k: number): number {
    let v = 0;
    for (let i = 0; i < k; i++) v = (v << 1) | this.bit();
    return v;
  }

  extend(s: number): number {
    if (s === 0) return 0;
    if (s > 16) throw invalid("has a coefficient of more than 16 bits");
    const v = this.bits(s);
    return v < 1 << (s - 1) ? v - (1 << s) + 1 : v;
  }

  decode(t: Huffman): number {
    let code = 0;
    for (let l = 1; l <= 16; l++) {
      code = (code << 1) | this.bit();
      if (code <= (t.maxcode[l] ?? -1)) return t.symbols[(t.valptr[l] ?? 0) + code - (t.mincode[l] ?? 0)] ?? 0;
    }
    throw invalid("has a corrupt Huffman code");
  }

  /** After a restart interval: the next RSTn is read past, and the bit buffer starts afresh. */
  restart(): void {
    this.n = 0;
    this.marker = false;
    while (this.pos + 1 < this.d.length) {
      if (this.d[this.pos] === 0xff && (this.d[this.pos + 1] ?? 0) >= 0xd0 && (this.d[this.pos + 1] ?? 0) <= 0xd7) {
        this.pos += 2;
        return;
      }
      if (this.d[this.pos] === 0xff && this.d[this.pos + 1] !== 0 && this.d[this.pos + 1] !== 0xff) return;
      this.pos += 1;
    }
  }
}

/** Where a scan's entropy-coded data ends: the next marker that is not a byte of 0xFF or a restart. */
export function scanEnd(d: Buffer, at: number): number {
  for (let i = at; i + 1 < d.length; i++) {
    if (d[i] !== 0xff) continue;
    const m = d[i + 1] ?? 0;
    if (m !== 0 && m !== 0xff && (m < 0xd0 || m > 0xd7)) return i;
  }
  return d.length;
}
