import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";

/** Flushes a file or a directory (its entries: a rename into it) to the disk. */
export function fsyncPath(path: string): void {
  const fd = openSync(path, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Writes a file so that a crash leaves the old content or the new, never a mix: temp file, fsync, rename. */
export function writeFileAtomically(path: string, text: string | Uint8Array, mode = 0o600): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.tmp`;
  // Created afresh, so that it gets `mode` (an existing file keeps its own).
  rmSync(tmp, { force: true });
  writeFileSync(tmp, text, { mode, flag: "wx" });
  fsyncPath(tmp);
  renameSync(tmp, path);
  fsyncPath(dirname(path));
}

/** Points a link at `target` by renaming a new link over it: the path is never without one (not fsynced). */
export function replaceLink(path: string, target: string): void {
  const tmp = `${path}.new`;
  rmSync(tmp, { force: true });
  symlinkSync(target, tmp);
  renameSync(tmp, path);
}
