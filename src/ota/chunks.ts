import { createHash } from "node:crypto";

/**
 * Content-defined chunking (FastCDC, Xia et al., USENIX ATC 2016, with normalized chunking): chunk boundaries
 * follow the content, not offsets, so bytes inserted or removed in one place (a new app bundle inside the
 * binary) change only the chunks around them, and the rest of a new release is found in the binary the device
 * already runs. Both sides must use the same parameters: they are part of the chunk index.
 */
export interface ChunkParams {
  min: number;
  avg: number;
  max: number;
}

export const DEFAULT_CHUNKS: ChunkParams = { min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 };

/** How much of a file `chunkFile` holds at once (at least twice the largest chunk). */
const WINDOW = 4 * 1024 * 1024;

export interface Chunk {
  offset: number;
  size: number;
  sha256: string;
}

/** 256 pseudo-random 32-bit values, fixed forever: derived from sha256 so that any language can rebuild them. */
const GEAR = (() => {
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) table[i] = createHash("sha256").update(`outpost-gear-${i}`).digest().readUInt32BE(0);
  return table;
})();

/** A mask of `bits` one bits spread over the high half of the word (FastCDC's padding of zero bits). */
function mask(bits: number): number {
  let m = 0;
  for (let i = 0; i < bits; i++) m |= 1 << (31 - 2 * i);
  return m >>> 0;
}

/** Where the chunk starting at `start` ends (exclusive), for `data`. */
function cut(data: Uint8Array, start: number, p: ChunkParams, small: number, large: number): number {
  const remaining = data.length - start;
  if (remaining <= p.min) return data.length;
  const end = start + Math.min(remaining, p.max);
  const normal = start + Math.min(remaining, p.avg);
  let fp = 0;
  let i = start + p.min;
  // Harder to cut before the average size, easier after: sizes cluster around it.
  for (; i < normal; i++) {
    fp = ((fp << 1) + (GEAR[data[i] as number] as number)) >>> 0;
    if ((fp & small) === 0) return i + 1;
  }
  for (; i < end; i++) {
    fp = ((fp << 1) + (GEAR[data[i] as number] as number)) >>> 0;
    if ((fp & large) === 0) return i + 1;
  }
  return end;
}

export function checkParams(p: ChunkParams): void {
  const pow2 = (n: number) => Number.isInteger(Math.log2(n));
  if (!(pow2(p.avg) && p.min >= 64 && p.min < p.avg && p.avg < p.max && p.max <= 16 * 1024 * 1024)) {
    throw new RangeError(
      `chunk sizes must be 64 <= min < avg < max <= 16 MiB, avg a power of two: ${JSON.stringify(p)}`,
    );
  }
}

/**
 * The one chunker both `chunk` and `chunkFile` use, for checked parameters: `next(data, start)` is the chunk
 * that starts at `start` of `data` (whose end is the data's end or at least `max` bytes further), with its hash.
 */
function chunker(p: ChunkParams) {
  checkParams(p);
  const bits = Math.log2(p.avg);
  const small = mask(bits + 2);
  const large = mask(bits - 2);
  return (data: Uint8Array, start: number) => {
    const end = cut(data, start, p, small, large);
    return { end, sha256: createHash("sha256").update(data.subarray(start, end)).digest("hex") };
  };
}

/** Splits `data` into content-defined chunks, each with its sha256. */
export function chunk(data: Uint8Array, p: ChunkParams = DEFAULT_CHUNKS): Chunk[] {
  const next = chunker(p);
  const chunks: Chunk[] = [];
  let start = 0;
  while (start < data.length) {
    const { end, sha256 } = next(data, start);
    chunks.push({ offset: start, size: end - start, sha256 });
    start = end;
  }
  return chunks;
}

/** What `chunkFile` reads through: a FileHandle, or anything that reads at a position. */
export interface PositionalReader {
  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
}

/**
 * `chunk` over a file read through a window of a few MiB, never whole in memory: a 120 MiB running binary
 * cost twice its size in anonymous memory while a release was staged. The same chunks as `chunk` of the whole
 * file: a cut looks at most `max` bytes past its start, so the window holds at least that much (or the end).
 * A file that ends before `size` ends the chunks there.
 */
export async function chunkFile(
  file: PositionalReader,
  size: number,
  p: ChunkParams = DEFAULT_CHUNKS,
  windowBytes = WINDOW,
): Promise<Chunk[]> {
  const next = chunker(p);
  const buf = Buffer.allocUnsafe(Math.max(windowBytes, 2 * p.max));
  const chunks: Chunk[] = [];
  let base = 0; // the file offset of buf[0]
  let filled = 0; // bytes of buf read
  let start = 0; // where the next chunk starts in buf
  for (;;) {
    if (filled - start < p.max && base + filled < size) {
      buf.copy(buf, 0, start, filled);
      base += start;
      filled -= start;
      start = 0;
      while (filled < buf.length && base + filled < size) {
        const want = Math.min(buf.length - filled, size - base - filled);
        const { bytesRead } = await file.read(buf, filled, want, base + filled);
        if (bytesRead === 0) break;
        filled += bytesRead;
      }
    }
    if (start >= filled) return chunks;
    const { end, sha256 } = next(buf.subarray(0, filled), start);
    chunks.push({ offset: base + start, size: end - start, sha256 });
    start = end;
  }
}

/** What a device must fetch to build `wanted` from what it has: chunks (by hash) it has none of. */
export function plan(wanted: readonly Chunk[], have: readonly Chunk[]) {
  const local = new Map(have.map((c) => [c.sha256, c]));
  const fetch = new Map<string, Chunk>();
  let reused = 0;
  for (const c of wanted) {
    if (local.has(c.sha256)) reused += c.size;
    else fetch.set(c.sha256, c);
  }
  const fetchBytes = [...fetch.values()].reduce((n, c) => n + c.size, 0);
  return { local, fetch: [...fetch.values()], fetchBytes, reusedBytes: reused };
}
