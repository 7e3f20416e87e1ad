import { createHash } from "node:crypto";
import { type FileHandle, open, rename, stat } from "node:fs/promises";
import { OutpostError } from "../core/errors.ts";
import type { Chunk } from "./chunks.ts";
import { chunkFile } from "./chunks.ts";
import type { ChunkIndex } from "./manifest.ts";

/** Where missing bytes come from: one contiguous range of the artifact per call (HTTP Range, MQTT chunks). */
export interface ByteSource {
  /**
   * `accept` says whether bytes are the right ones (their chunks' hashes): a source that can get other answers
   * (MQTT, where anyone on the broker may answer) drops what fails it and waits for the genuine answer.
   */
  read(
    offset: number,
    size: number,
    signal?: AbortSignal,
    accept?: (bytes: Uint8Array) => boolean,
  ): Promise<Uint8Array>;
  /**
   * One chunk by its hash, from a source that has chunks apart (HTTP: `chunks/<sha256>.zst`): at most `size`
   * bytes, not yet checked; undefined when the source has none, and then `read` serves the rest.
   */
  chunk?(sha256: string, size: number, signal?: AbortSignal): Promise<Uint8Array | undefined>;
}

/** Chunks fetched by hash at once: a link's round trip is paid once per this many chunks, not per chunk. */
const CHUNKS_AT_ONCE = 6;

export interface AssembleOptions {
  /** The whole file's sha256 and size, from the verified manifest. */
  sha256: string;
  size: number;
  index: ChunkIndex;
  /** The file the device already has (its running binary, a model's current version), if any. */
  current?: string;
  source: ByteSource;
  /** The file being built; kept across restarts, so that a cut download resumes. */
  partial: string;
  /** Where the verified file goes, by rename. */
  ready: string;
  /** Ranges fetched at once are merged up to this many bytes. */
  maxRange?: number;
  signal?: AbortSignal;
  onProgress?(p: AssembleProgress): void;
}

export interface AssembleProgress {
  /** Bytes of the file in place: found already in the partial file, copied from the current one, or fetched. */
  done: number;
  size: number;
  fetched: number;
  reused: number;
  resumed: number;
}

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/**
 * Fetches `chunks` by hash, a few at once, and writes each (checked) wherever the file has it. Returns what is
 * left for ranges: all of it when the source has no chunks apart (its first answer says so), else the chunks
 * it could not give right (missing, or not matching their hash: a partly uploaded or damaged chunks/).
 */
async function byHash(
  chunks: Chunk[],
  source: ByteSource,
  out: FileHandle,
  progress: AssembleProgress,
  o: Pick<AssembleOptions, "signal" | "onProgress">,
): Promise<Chunk[]> {
  const where = new Map<string, Chunk[]>();
  for (const c of chunks) {
    const at = where.get(c.sha256);
    if (at) at.push(c);
    else where.set(c.sha256, [c]);
  }
  const todo = [...where.values()];
  const first = todo[0]?.[0];
  if (!first || !source.chunk) return chunks;
  const left: Chunk[] = [];
  const place = async (c: Chunk, bytes: Uint8Array | undefined) => {
    const places = where.get(c.sha256) ?? [];
    if (!bytes || bytes.length !== c.size || sha(bytes) !== c.sha256) {
      left.push(...places);
      return;
    }
    for (const at of places) {
      await out.write(bytes, 0, at.size, at.offset);
      progress.done += at.size;
      progress.fetched += at.size;
    }
  };
  // The first alone: a source without chunks apart says so once, and ranges take over.
  const bytes = await source.chunk(first.sha256, first.size, o.signal);
  if (!bytes) return chunks;
  await place(first, bytes);
  let next = 1;
  let sinceSync = 0;
  let failed = false;
  const worker = async () => {
    try {
      while (!failed && next < todo.length) {
        if (o.signal?.aborted) throw new OutpostError("TASK_ABORTED", "the update was cancelled");
        const c = todo[next++]?.[0] as Chunk;
        await place(c, await source.chunk?.(c.sha256, c.size, o.signal));
        sinceSync += c.size;
        if (sinceSync >= 4 * 1024 * 1024) {
          sinceSync = 0;
          await out.sync();
          o.onProgress?.({ ...progress });
        }
      }
    } catch (err) {
      failed = true;
      throw err;
    }
  };
  // Every worker has stopped before the file is closed, whichever failed first: none writes after it.
  const ended = await Promise.allSettled(Array.from({ length: CHUNKS_AT_ONCE }, worker));
  const failure = ended.find((e) => e.status === "rejected");
  if (failure) throw failure.reason;
  await out.sync();
  o.onProgress?.({ ...progress });
  return left.sort((a, b) => a.offset - b.offset);
}

function offsets(index: ChunkIndex): Chunk[] {
  let at = 0;
  return index.chunks.map(([size, sha256]) => {
    const c = { offset: at, size, sha256 };
    at += size;
    return c;
  });
}

/**
 * Builds a release's file from the chunks the device already has and the ones it fetches, and checks the whole
 * file's sha256 before renaming it into place. Crash-safe and resumable without a journal: a restart hashes what
 * the partial file already holds and keeps every chunk that is right, so a cut download never starts over and a
 * torn write is simply fetched again.
 */
export async function assemble(o: AssembleOptions): Promise<AssembleProgress> {
  const wanted = offsets(o.index);
  const total = wanted.reduce((n, c) => n + c.size, 0);
  if (total !== o.size) {
    throw new OutpostError(
      "OTA_MANIFEST_INVALID",
      `the chunk index covers ${total} bytes, the manifest says ${o.size}`,
    );
  }
  const progress: AssembleProgress = { done: 0, size: o.size, fetched: 0, reused: 0, resumed: 0 };
  // Positional writes: not "a" (O_APPEND would put every write at the end).
  const out = await open(o.partial, "r+").catch(() => open(o.partial, "w+"));
  try {
    await out.truncate(o.size);
    // 1. What the partial file already holds (a cut download, a crash).
    const missing: Chunk[] = [];
    for (const c of wanted) {
      const buf = Buffer.alloc(c.size);
      await out.read(buf, 0, c.size, c.offset);
      if (sha(buf) === c.sha256) {
        progress.done += c.size;
        progress.resumed += c.size;
      } else missing.push(c);
    }
    // 2. What the current file has, found by content wherever it sits there.
    const toFetch: Chunk[] = [];
    if (o.current && missing.length > 0) {
      const current = await open(o.current, "r");
      try {
        const size = (await current.stat()).size;
        const have = new Map((await chunkFile(current, size, o.index.params)).map((c) => [c.sha256, c]));
        for (const c of missing) {
          const local = have.get(c.sha256);
          if (!local) {
            toFetch.push(c);
            continue;
          }
          const buf = Buffer.alloc(c.size);
          await current.read(buf, 0, c.size, local.offset);
          await out.write(buf, 0, c.size, c.offset);
          progress.done += c.size;
          progress.reused += c.size;
        }
      } finally {
        await current.close();
      }
    } else toFetch.push(...missing);
    await out.sync();
    o.onProgress?.({ ...progress });
    // 3a. Chunks by hash, where the source has them apart (compressed): each checked before it is written.
    const rest = await byHash(toFetch, o.source, out, progress, o);
    // 3b. The rest, in merged ranges; each chunk checked before it is written.
    for (const range of ranges(rest, o.maxRange ?? 4 * 1024 * 1024)) {
      if (o.signal?.aborted) throw new OutpostError("TASK_ABORTED", "the update was cancelled");
      const first = range[0] as Chunk;
      const last = range[range.length - 1] as Chunk;
      const length = last.offset + last.size - first.offset;
      const matches = (bytes: Uint8Array) =>
        range.every((c) => sha(bytes.subarray(c.offset - first.offset, c.offset - first.offset + c.size)) === c.sha256);
      const bytes = await o.source.read(first.offset, length, o.signal, matches);
      if (bytes.length !== length) {
        throw new OutpostError(
          "OTA_DOWNLOAD_FAILED",
          `asked for ${length} bytes at ${first.offset}, got ${bytes.length}`,
        );
      }
      for (const c of range) {
        const part = bytes.subarray(c.offset - first.offset, c.offset - first.offset + c.size);
        if (sha(part) !== c.sha256) {
          throw new OutpostError(
            "OTA_CHUNK_CORRUPT",
            `the chunk at ${c.offset} (${c.size} bytes) does not match its sha256`,
          );
        }
        await out.write(part, 0, c.size, c.offset);
      }
      await out.sync();
      progress.done += length;
      progress.fetched += length;
      o.onProgress?.({ ...progress });
    }
    // 4. The whole file, as the signed manifest says.
    const whole = createHash("sha256");
    const buf = Buffer.alloc(1024 * 1024);
    for (let at = 0; at < o.size; at += buf.length) {
      const { bytesRead } = await out.read(buf, 0, Math.min(buf.length, o.size - at), at);
      whole.update(buf.subarray(0, bytesRead));
    }
    const got = whole.digest("hex");
    if (got !== o.sha256) throw new OutpostError("OTA_HASH_MISMATCH", `the assembled file's sha256 is ${got}`);
  } finally {
    await out.close();
  }
  await rename(o.partial, o.ready);
  if ((await stat(o.ready)).size !== o.size) throw new OutpostError("OTA_HASH_MISMATCH", "the file changed size");
  return progress;
}

/** Adjacent chunks merged into ranges of at most `max` bytes (a single larger chunk stays whole). */
function ranges(chunks: readonly Chunk[], max: number): Chunk[][] {
  const out: Chunk[][] = [];
  let current: Chunk[] = [];
  let bytes = 0;
  for (const c of [...chunks].sort((a, b) => a.offset - b.offset)) {
    const prev = current[current.length - 1];
    const adjacent = prev !== undefined && prev.offset + prev.size === c.offset;
    if (current.length > 0 && (!adjacent || bytes + c.size > max)) {
      out.push(current);
      current = [];
      bytes = 0;
    }
    current.push(c);
    bytes += c.size;
  }
  if (current.length > 0) out.push(current);
  return out;
}
