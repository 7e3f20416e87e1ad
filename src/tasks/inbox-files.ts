import { createHash } from "node:crypto";
import { constants } from "node:fs";
import { lstat, open } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import type { TaskResult } from "./runner.ts";

// The watched folder's file names and checked reads (inbox.ts).

/**
 * A claimed image's name in `work/`: `<claim>[.<returns>][g][s]~<camera's name>`, unique, so that a camera
 * reusing one name never has its next frame renamed over the one being judged. `g` says the frame was handed to
 * its task (renamed so just before: no fsync); `returns` counts the starts that found it so, without a result
 * (it was running when the agent died); `s` marks a frame put back by a clean stop, which is not a crash. Names
 * from before claims were numbered are taken whole. (The `s` flag of the pattern: a camera's name may hold a
 * newline.)
 */
const CLAIMED = /^([0-9a-z]+-[0-9]+)(?:\.([0-9]+))?(g?)(s?)~(.+)$/s;
export interface Claim {
  claim: string;
  returns: number;
  started: boolean;
  stopped: boolean;
  camera: string;
}
export const cameraName = (work: string) => CLAIMED.exec(work)?.[5] ?? work;
export function claimOf(work: string): Claim {
  const m = CLAIMED.exec(work);
  if (!m) return { claim: "0-0", returns: 0, started: true, stopped: false, camera: work };
  return {
    claim: m[1] ?? "",
    returns: Number(m[2] ?? 0),
    started: m[3] === "g",
    stopped: m[4] === "s",
    camera: m[5] ?? "",
  };
}
export const claimName = (c: Claim) =>
  `${c.claim}${c.returns > 0 ? `.${c.returns}` : ""}${c.started ? "g" : ""}${c.stopped ? "s" : ""}~${c.camera}`;

/**
 * A camera's name as the folder keeps it: names over 200 bytes are cut (at a character) and made unique with a
 * hash of the whole, so a claim name, a `.N` suffix and `.json.tmp` still fit the file system's 255 bytes.
 */
const MAX_NAME_BYTES = 200;
export function shortName(name: string): string {
  if (Buffer.byteLength(name) <= MAX_NAME_BYTES) return name;
  let cut = name.slice(0, 150);
  while (Buffer.byteLength(cut) > 150) cut = cut.slice(0, -1);
  return `${cut}~${createHash("sha256").update(name).digest("hex").slice(0, 12)}`;
}

/** A stored result is small; a larger file in results/ is not one (and is never read whole). */
export const MAX_RESULT_BYTES = 1024 * 1024;

export const exists = (path: string) =>
  lstat(path).then(
    () => true,
    () => false,
  );

/** A frame larger than this is not read (a 24 MP PNG is well under it); it goes to failed/ with the reason. */
export const MAX_FRAME_BYTES = 64 * 1024 * 1024;
const OPEN_FRAME = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/** Why a file cannot be a frame, or undefined when it can (a regular file within the size bound). */
export function notAFrame(
  st: {
    isFile(): boolean;
    isSymbolicLink(): boolean;
    isFIFO(): boolean;
    isDirectory(): boolean;
    size: number;
  },
  max = MAX_FRAME_BYTES,
) {
  if (!st.isFile()) {
    const kind = st.isSymbolicLink() ? "a symlink" : st.isFIFO() ? "a FIFO" : st.isDirectory() ? "a folder" : "special";
    return `not a regular file (${kind})`;
  }
  if (st.size > max) return `${st.size} bytes, more than ${max}`;
  return undefined;
}

/** A file of the folder read through one checked descriptor (regular, at most `max` bytes), or why not. */
export async function readChecked(path: string, max: number): Promise<Uint8Array | string> {
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(path, OPEN_FRAME);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ELOOP" || code === "ENXIO") return "not a regular file (a symlink or a socket)";
    throw err;
  }
  try {
    const st = await handle.stat();
    const why = notAFrame(st, max);
    if (why) return why;
    const bytes = Buffer.alloc(st.size);
    let done = 0;
    while (done < st.size) {
      const { bytesRead } = await handle.read(bytes, done, st.size - done, done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return bytes.subarray(0, done);
  } finally {
    await handle.close();
  }
}

/**
 * The camera may reuse a name: the first of `name`, `name.1`, ... where neither an image nor a result lies
 * (a frame named `x.json` must not land on frame x's result). `moved`: the image already lies there (a
 * half-done move), so the first without a result.
 */
export async function freeName(dir: string, name: string, moved = false): Promise<string> {
  for (let i = 0; ; i++) {
    const candidate = i === 0 ? name : `${name}.${i}`;
    if (await exists(join(dir, `${candidate}.json`))) continue;
    if (moved || !(await exists(join(dir, candidate)))) return candidate;
  }
}

/** A stored result as the inbox wrote it: this task's, with a trace and an outcome (anything else is not one). */
function storedResult(task: string) {
  return z.looseObject({ task: z.literal(task), trace: z.string().min(1), ok: z.boolean() });
}

/** The stored result at `path` if it is one of `task`'s (read through a checked descriptor, bounded); else undefined. */
export async function readStoredResult(path: string, task: string): Promise<TaskResult | undefined> {
  const bytes = await readChecked(path, MAX_RESULT_BYTES);
  if (typeof bytes === "string") return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(bytes).toString("utf8"));
  } catch {
    return undefined;
  }
  const result = storedResult(task).safeParse(parsed);
  return result.success ? result.data : undefined;
}

/** The folder's subdirectories must be directories, not links to elsewhere (nothing is written through one). */
export async function checkDirs(
  dir: string,
  subs: readonly string[] = ["inbox", "work", "results", "done", "failed"],
): Promise<void> {
  for (const sub of subs) {
    const st = await lstat(join(dir, sub));
    if (!st.isDirectory())
      throw new Error(`${sub}/ is not a directory (${st.isSymbolicLink() ? "a symlink" : "a file"})`);
  }
}
