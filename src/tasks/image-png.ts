// A PNG decoder that never holds the image: it reads IHDR first, then inflates IDAT as a stream and unfilters
// one row at a time, handing each row to a sink that keeps only the pixels it needs. Memory is two rows and
// zlib's window, whatever the image's size; the inflate is bounded by what IHDR implies. Pixel values are those
// pngjs gives (the reference this replaced): 16-bit and low bit depths rescaled to 0-255 with rounding, a
// palette looked up, a tRNS colour made black.
import { crc32, createInflate } from "node:zlib";
import { OutpostError } from "../core/errors.ts";
import { reclaimEvery } from "../core/reclaim.ts";

export interface PngHeader {
  width: number;
  height: number;
  bitDepth: number;
  colorType: number;
  interlaced: boolean;
}

/** Where decoded rows go: `wants(y)` says whether row y is needed; `row` gets pixels x0, x0+dx, ... of row y. */
export interface RowSink {
  wants(y: number): boolean;
  row(y: number, x0: number, dx: number, count: number, rgb: (i: number, out: Uint8Array) => void): void;
}

const SIGNATURE = 0x89504e47;
const CHANNELS: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };
const DEPTHS: Record<number, readonly number[]> = {
  0: [1, 2, 4, 8, 16],
  2: [8, 16],
  3: [1, 2, 4, 8],
  4: [8, 16],
  6: [8, 16],
};
/** Adam7: start x, start y, step x, step y of each pass. */
const ADAM7 = [
  [0, 0, 8, 8],
  [4, 0, 8, 8],
  [0, 4, 4, 8],
  [2, 0, 4, 4],
  [0, 2, 2, 4],
  [1, 0, 2, 2],
  [0, 1, 1, 2],
] as const;

/** Dead inflated chunks are collected every few MiB (see core/reclaim.ts: a 24 MP PNG peaked at up to 44 MiB). */
const RECLAIM_EVERY = 4 * 1024 * 1024;

const invalid = (why: string) => new OutpostError("TASK_INPUT_INVALID", `the image does not decode: PNG ${why}`);

export const isPng = (b: Uint8Array) =>
  b.length >= 8 && Buffer.from(b.buffer, b.byteOffset, 4).readUInt32BE(0) === SIGNATURE;

interface Chunk {
  type: string;
  data: Buffer;
  /** Where the chunk starts in the file. */
  at: number;
}

/** The chunks from `at` (the first after the signature by default), each checked against its CRC if `verify`. */
function* chunks(b: Buffer, at = 8, verify = true): Generator<Chunk> {
  while (at + 12 <= b.length) {
    const length = b.readUInt32BE(at);
    if (at + 12 + length > b.length) throw invalid("is truncated (a chunk runs past the end)");
    const type = b.toString("latin1", at + 4, at + 8);
    const crc = b.readUInt32BE(at + 8 + length);
    if (verify && crc32(b.subarray(at + 4, at + 8 + length)) !== crc)
      throw invalid(`has a corrupt ${type} chunk (CRC)`);
    yield { type, data: b.subarray(at + 8, at + 8 + length), at };
    if (type === "IEND") return;
    at += 12 + length;
  }
  throw invalid("is truncated (no IEND)");
}

/** IHDR alone, from the first 33 bytes: nothing else is read. */
export function pngHeader(b: Buffer): PngHeader {
  if (b.length < 33 || b.toString("latin1", 12, 16) !== "IHDR" || b.readUInt32BE(8) !== 13)
    throw invalid("has no IHDR");
  const h = {
    width: b.readUInt32BE(16),
    height: b.readUInt32BE(20),
    bitDepth: b[24] ?? 0,
    colorType: b[25] ?? 0,
    interlaced: b[28] === 1,
  };
  if (h.width === 0 || h.height === 0 || h.width > 0x7fffffff || h.height > 0x7fffffff)
    throw invalid(`declares ${h.width}x${h.height}`);
  if (!DEPTHS[h.colorType]?.includes(h.bitDepth))
    throw invalid(`colour type ${h.colorType} with bit depth ${h.bitDepth} is not valid`);
  if (b[26] !== 0 || b[27] !== 0 || (b[28] ?? 0) > 1) throw invalid("uses an unknown compression, filter or interlace");
  return h;
}

function unfilter(filter: number, cur: Uint8Array, prev: Uint8Array, bpp: number, n: number): void {
  switch (filter) {
    case 0:
      return;
    case 1:
      for (let i = bpp; i < n; i++) cur[i] = ((cur[i] ?? 0) + (cur[i - bpp] ?? 0)) & 255;
      return;
    case 2:
      for (let i = 0; i < n; i++) cur[i] = ((cur[i] ?? 0) + (prev[i] ?? 0)) & 255;
      return;
    case 3:
      for (let i = 0; i < n; i++) {
        const left = i >= bpp ? (cur[i - bpp] ?? 0) : 0;
        cur[i] = ((cur[i] ?? 0) + ((left + (prev[i] ?? 0)) >> 1)) & 255;
      }
      return;
    case 4:
      for (let i = 0; i < n; i++) {
        const a = i >= bpp ? (cur[i - bpp] ?? 0) : 0;
        const b = prev[i] ?? 0;
        const c = i >= bpp ? (prev[i - bpp] ?? 0) : 0;
        const p = a + b - c;
        const pa = Math.abs(p - a);
        const pb = Math.abs(p - b);
        const pc = Math.abs(p - c);
        cur[i] = ((cur[i] ?? 0) + (pa <= pb && pa <= pc ? a : pb <= pc ? b : c)) & 255;
      }
      return;
    default:
      throw invalid(`has an unknown row filter ${filter}`);
  }
}

/**
 * Decodes `b` (already known to be a PNG of `h`'s size) row by row into `sink`. The inflated stream must be
 * exactly what IHDR implies: more is refused as soon as it appears, less as truncated.
 */
export async function decodePng(b: Buffer, h: PngHeader, sink: RowSink): Promise<void> {
  const channels = CHANNELS[h.colorType] ?? 1;
  const bitsPerPixel = channels * h.bitDepth;
  const bpp = Math.max(1, bitsPerPixel >> 3);
  let palette: Uint8Array | undefined;
  let trns: Buffer | undefined;
  // A first pass checks the chunks (CRCs, one run of IDAT) and finds PLTE and tRNS; nothing is kept per chunk,
  // so a file of a million tiny IDATs costs what its bytes do.
  let firstIdat: number | undefined;
  let afterIdat = false;
  for (const c of chunks(b)) {
    if (c.type === "IDAT") {
      if (afterIdat) throw invalid("has IDAT chunks that are not consecutive");
      firstIdat ??= c.at;
    } else if (firstIdat !== undefined) afterIdat = true;
    if (c.type === "PLTE") palette = c.data;
    else if (c.type === "tRNS") trns = c.data;
  }
  if (h.colorType === 3 && !palette) throw invalid("has a palette colour type and no PLTE");
  if (firstIdat === undefined) throw invalid("has no IDAT");
  const idatFrom = firstIdat;

  // The passes: each (x0, y0, dx, dy, columns, rows) with at least one pixel.
  const passes = (h.interlaced ? ADAM7 : [[0, 0, 1, 1] as const])
    .map(([x0, y0, dx, dy]) => ({
      x0,
      y0,
      dx,
      dy,
      cols: Math.ceil((h.width - x0) / dx),
      rows: Math.ceil((h.height - y0) / dy),
    }))
    .filter((p) => p.cols > 0 && p.rows > 0);
  const rowBytes = (cols: number) => Math.ceil((cols * bitsPerPixel) / 8);
  const expected = passes.reduce((sum, p) => sum + (rowBytes(p.cols) + 1) * p.rows, 0);
  const maxRow = rowBytes(h.width);
  let cur = new Uint8Array(maxRow);
  let prev = new Uint8Array(maxRow);

  const max = (1 << h.bitDepth) - 1;
  const scale = (v: number) => (h.bitDepth === 8 ? v : Math.floor((v * 255) / max + 0.5));
  // One sample of a row: byte-aligned depths read whole, 1/2/4-bit ones from their bit position (MSB first).
  const raw = (row: Uint8Array, index: number): number => {
    if (h.bitDepth === 8) return row[index] ?? 0;
    if (h.bitDepth === 16) return ((row[2 * index] ?? 0) << 8) | (row[2 * index + 1] ?? 0);
    const bit = index * h.bitDepth;
    return ((row[bit >> 3] ?? 0) >> (8 - h.bitDepth - (bit & 7))) & max;
  };
  const transparent = (row: Uint8Array, i: number): boolean => {
    if (!trns || h.colorType === 3) return false;
    if (h.colorType === 0) return trns.length >= 2 && raw(row, i) === trns.readUInt16BE(0);
    if (h.colorType === 2)
      return (
        trns.length >= 6 &&
        raw(row, 3 * i) === trns.readUInt16BE(0) &&
        raw(row, 3 * i + 1) === trns.readUInt16BE(2) &&
        raw(row, 3 * i + 2) === trns.readUInt16BE(4)
      );
    return false;
  };
  const rgb = (i: number, out: Uint8Array) => {
    const row = cur;
    if (transparent(row, i)) {
      out[0] = out[1] = out[2] = 0;
      return;
    }
    switch (h.colorType) {
      case 3: {
        const p = raw(row, i);
        if (!palette || 3 * p + 2 >= palette.length) throw invalid(`uses palette index ${p}, not in its PLTE`);
        out[0] = palette[3 * p] ?? 0;
        out[1] = palette[3 * p + 1] ?? 0;
        out[2] = palette[3 * p + 2] ?? 0;
        return;
      }
      case 0:
      case 4:
        out[0] = out[1] = out[2] = scale(raw(row, i * (h.colorType === 0 ? 1 : 2)));
        return;
      default: {
        const c = h.colorType === 2 ? 3 : 4;
        out[0] = scale(raw(row, i * c));
        out[1] = scale(raw(row, i * c + 1));
        out[2] = scale(raw(row, i * c + 2));
      }
    }
  };

  let pass = 0;
  let rowInPass = 0;
  let filled = -1; // -1: the filter byte is next; else bytes of the row received
  let filter = 0;
  let total = 0;
  const collect = reclaimEvery(RECLAIM_EVERY);
  const take = (data: Buffer) => {
    total += data.length;
    collect(data.length);
    if (total > expected) throw invalid(`inflates to more than the ${expected} bytes its IHDR implies`);
    let at = 0;
    while (at < data.length) {
      const p = passes[pass];
      if (!p) return;
      const n = rowBytes(p.cols);
      if (filled < 0) {
        filter = data[at++] ?? 0;
        filled = 0;
        continue;
      }
      const part = Math.min(n - filled, data.length - at);
      cur.set(data.subarray(at, at + part), filled);
      filled += part;
      at += part;
      if (filled < n) continue;
      unfilter(filter, cur, prev, bpp, n);
      const y = p.y0 + rowInPass * p.dy;
      if (sink.wants(y)) sink.row(y, p.x0, p.dx, p.cols, rgb);
      [cur, prev] = [prev, cur];
      filled = -1;
      if (++rowInPass === p.rows) {
        pass += 1;
        rowInPass = 0;
        prev.fill(0); // each pass starts as if above it were a row of zeros
      }
    }
  };

  await new Promise<void>((resolve, reject) => {
    const inflate = createInflate();
    let failed = false;
    const fail = (err: unknown) => {
      if (failed) return;
      failed = true;
      inflate.destroy();
      reject(err instanceof OutpostError ? err : invalid(`does not inflate: ${(err as Error).message}`));
    };
    inflate.on("data", (data: Buffer) => {
      try {
        take(data);
      } catch (err) {
        fail(err);
      }
    });
    inflate.on("error", fail);
    let ended = false;
    inflate.on("end", () => {
      ended = true;
      if (failed) return;
      if (total < expected) fail(invalid(`is truncated (${total} of ${expected} image bytes)`));
      else resolve();
    });
    // IDAT data is written in batches of up to 256 KiB with backpressure: never the whole compressed stream in
    // one buffer, and never one write per (possibly one-byte) chunk. Data after the zlib stream's end is ignored.
    (async () => {
      let batch: Buffer[] = [];
      let size = 0;
      const flush = async () => {
        if (size === 0) return;
        const data = batch.length === 1 ? (batch[0] as Buffer) : Buffer.concat(batch, size);
        batch = [];
        size = 0;
        if (!inflate.write(data)) await new Promise((r) => inflate.once("drain", r));
      };
      // From the first IDAT to the end of their run, CRCs already checked by the first pass.
      for (const c of chunks(b, idatFrom, false)) {
        if (failed || ended) return;
        if (c.type !== "IDAT") break;
        if (c.data.length === 0) continue;
        batch.push(c.data);
        size += c.data.length;
        if (size >= 256 * 1024) await flush();
      }
      await flush();
      if (!failed && !ended) inflate.end();
    })().catch(fail);
  });
}
