import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";

/** Writes a file so that a crash leaves the old content or the new, never a mix: temp file, fsync, rename. */
export function writeFileAtomically(path: string, text: string | Uint8Array, mode = 0o600): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.tmp`;
  // Created afresh, so that it gets `mode` (an existing file keeps its own).
  rmSync(tmp, { force: true });
  writeFileSync(tmp, text, { mode, flag: "wx" });
  const fd = openSync(tmp, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
  const dir = openSync(dirname(path), "r");
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}
