import { createHash } from "node:crypto";
import {
  closeSync,
  constants,
  fstatSync,
  fsyncSync,
  lstatSync,
  openSync,
  readSync,
  rmdirSync,
  statSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { OutpostError } from "./errors.ts";
import { fsyncPath } from "./files.ts";

/**
 * A directory that a less privileged user can write (the agent's `state.dir/update`), as root must see it.
 * Node has no openat()/unlinkat(): the process's working directory stands in for the directory descriptor.
 * `chdir` resolves the path once; from then on `.` is that inode, whatever is renamed or linked in its place,
 * and every operation below takes a plain name relative to it. Before anything is done, `.` must be a
 * directory owned by `owner` (a uid root took from the system, never from a file the agent wrote): a symlink
 * the agent planted in place of the directory leads to someone else's directory and is refused.
 *
 * What is read there is untrusted input: opened once with O_NOFOLLOW|O_NONBLOCK (a symlink fails, a FIFO
 * cannot block), checked with fstat (a regular file of `owner`, within a size), and read only through that
 * descriptor. Nothing is ever created, chowned, chmodded, renamed or written there; `remove` unlinks a name
 * (unlink never follows a link; a directory is not removed).
 */
export interface PinnedDir {
  /** Whether the name exists (lstat: a dangling symlink exists too). */
  has(name: string): boolean;
  /** The file's bytes, at most `maxBytes` (larger: refused). */
  read(name: string, maxBytes: number): Buffer;
  /**
   * Copies exactly `size` bytes of the file, read once from one descriptor, into `to` (a new file, created
   * with `mode`, outside this directory), hashing what it copies; fsyncs the copy. Returns the sha256.
   */
  copyOut(name: string, size: number, to: string, mode: number): string;
  /** Unlinks the name if it exists. */
  remove(name: string): void;
  /** Flushes the directory's entries (after removals). */
  sync(): void;
}

/** Refused: what was found is not what may be read (a link, a FIFO, another owner, a wrong size). */
export class UntrustedFileError extends OutpostError {
  constructor(message: string) {
    super("OTA_STAGED_INVALID", message);
  }
}

const OPEN_UNTRUSTED = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/**
 * Runs `fn` with `dir` pinned as the working directory, then returns to `/`. Throws (code OTA_STAGED_INVALID)
 * when `dir` is not a directory owned by `owner`. `chdir` is the process's (tests of the checks pass their own).
 */
export function withPinnedDir<T>(
  dir: string,
  owner: number,
  fn: (d: PinnedDir) => T,
  chdir: (path: string) => void = process.chdir,
): T {
  chdir(dir);
  try {
    const st = statSync(".");
    if (!st.isDirectory() || st.uid !== owner) {
      throw new UntrustedFileError(`${dir} is not a directory of uid ${owner} (uid ${st.uid}): refused`);
    }
    return fn(pinned(dir, owner));
  } finally {
    chdir("/");
  }
}

function plainName(name: string): string {
  if (name === "" || name === "." || name === ".." || name.includes("/") || name.includes("\0")) {
    throw new UntrustedFileError(`${JSON.stringify(name)} is not a plain file name`);
  }
  return name;
}

function pinned(dir: string, owner: number): PinnedDir {
  /** One descriptor on a regular file of the owner, within bounds; closed by the caller. */
  function openChecked(name: string, check: (size: number) => string | undefined): { fd: number; size: number } {
    let fd: number;
    try {
      fd = openSync(plainName(name), OPEN_UNTRUSTED);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // ELOOP: the name is a symlink (O_NOFOLLOW). ENXIO: a socket. Anything else is as good a refusal.
      throw new UntrustedFileError(`${dir}/${name} cannot be opened safely (${code ?? "error"})`);
    }
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw new UntrustedFileError(`${dir}/${name} is not a regular file`);
      if (st.uid !== owner) throw new UntrustedFileError(`${dir}/${name} is owned by uid ${st.uid}, not ${owner}`);
      const problem = check(st.size);
      if (problem) throw new UntrustedFileError(`${dir}/${name}: ${problem}`);
      return { fd, size: st.size };
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  return {
    has(name) {
      try {
        lstatSync(plainName(name));
        return true;
      } catch {
        return false;
      }
    },
    read(name, maxBytes) {
      const { fd, size } = openChecked(name, (n) => (n > maxBytes ? `${n} bytes, more than ${maxBytes}` : undefined));
      try {
        const buf = Buffer.alloc(size);
        let done = 0;
        while (done < size) {
          const n = readSync(fd, buf, done, size - done, done);
          if (n === 0) break;
          done += n;
        }
        return buf.subarray(0, done);
      } finally {
        closeSync(fd);
      }
    },
    copyOut(name, size, to, mode) {
      const src = openChecked(name, (n) => (n !== size ? `${n} bytes, not the ${size} declared` : undefined));
      let dst: number | undefined;
      try {
        // A new file (wx): root's own, never a file that was there before.
        dst = openSync(to, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
        const hash = createHash("sha256");
        const buf = Buffer.allocUnsafe(1024 * 1024);
        let done = 0;
        while (done < size) {
          // Never more than declared, whatever the file grows to meanwhile.
          const n = readSync(src.fd, buf, 0, Math.min(buf.length, size - done), done);
          if (n === 0) throw new UntrustedFileError(`${dir}/${name} ended after ${done} of ${size} bytes`);
          hash.update(buf.subarray(0, n));
          let written = 0;
          while (written < n) written += writeSync(dst, buf, written, n - written);
          done += n;
        }
        fsyncSync(dst);
        return hash.digest("hex");
      } finally {
        if (dst !== undefined) closeSync(dst);
        closeSync(src.fd);
      }
    },
    remove(name) {
      try {
        unlinkSync(plainName(name));
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === "ENOENT") return;
        if (code !== "EISDIR" && code !== "EPERM") throw err;
        // A directory the agent made under a request's name: removed by name if empty (rmdir follows no
        // link), else left; nothing of root's is at stake either way.
        try {
          rmdirSync(name);
        } catch {
          // not empty: the path unit's start limit ends the loop it causes
        }
      }
    },
    sync() {
      // `.` is the pinned directory: the same open-fsync-close as any path.
      fsyncPath(".");
    },
  };
}
