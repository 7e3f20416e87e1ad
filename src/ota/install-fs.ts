import { createHash } from "node:crypto";
import * as nodeFs from "node:fs";
import { dirname } from "node:path";
import { fsyncPath } from "../core/files.ts";
import { type PinnedDir, withPinnedDir } from "../core/pinned-dir.ts";

/**
 * The file operations the installer uses, and nothing else: the real ones below, or a test's recording file
 * system that keeps only what was fsynced (test/unit/ota-power-cut.test.ts) to replay a power cut after each.
 * Every path-taking operation is for root's own directories (`/opt/outpost`, `/run/systemd`); the agent's
 * directory is reached only through `pinned` (src/core/pinned-dir.ts), by plain names.
 */
export interface InstallFs {
  exists(path: string): boolean;
  readFile(path: string): Buffer;
  /** Creates or truncates; durable only after `fsync(path)` and an fsync of its directory. */
  writeFile(path: string, data: Uint8Array | string, mode: number): void;
  chmod(path: string, mode: number): void;
  sha256(path: string): { sha256: string; size: number };
  fsync(path: string): void;
  rename(from: string, to: string): void;
  symlink(target: string, path: string): void;
  readlink(path: string): string | undefined;
  mkdir(path: string, mode: number): void;
  unlink(path: string): void;
  removeTree(path: string): void;
  list(path: string): string[];
  /** The first match of `pattern` in a file's bytes (as latin1), read in chunks; undefined when none. */
  scan(path: string, pattern: RegExp): RegExpExecArray | undefined;
  /**
   * Makes a file in root's own directory root's, with `mode`, through one O_NOFOLLOW descriptor (a release an
   * older installer copied kept the agent's staged file's owner).
   */
  ownByRoot(path: string, mode: number): boolean;
  /** Runs `fn` on the agent's directory, pinned and checked to be `owner`'s. */
  pinned<T>(dir: string, owner: number, fn: (d: PinnedDir) => T): T;
}

export const realFs: InstallFs = {
  exists: (p) => nodeFs.existsSync(p),
  readFile: (p) => nodeFs.readFileSync(p),
  writeFile: (p, data, mode) => {
    nodeFs.rmSync(p, { force: true });
    nodeFs.writeFileSync(p, data, { mode, flag: "wx" });
  },
  chmod: (p, mode) => nodeFs.chmodSync(p, mode),
  sha256: (p) => {
    const hash = createHash("sha256");
    const fd = nodeFs.openSync(p, "r");
    const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
    let size = 0;
    try {
      for (;;) {
        const n = nodeFs.readSync(fd, buf, 0, buf.length, null);
        if (n === 0) break;
        hash.update(buf.subarray(0, n));
        size += n;
      }
    } finally {
      nodeFs.closeSync(fd);
    }
    return { sha256: hash.digest("hex"), size };
  },
  fsync: fsyncPath,
  rename: (from, to) => nodeFs.renameSync(from, to),
  symlink: (target, p) => {
    nodeFs.rmSync(p, { force: true });
    nodeFs.symlinkSync(target, p);
  },
  readlink: (p) => {
    try {
      return nodeFs.readlinkSync(p);
    } catch {
      return undefined;
    }
  },
  mkdir: (p, mode) => {
    nodeFs.mkdirSync(p, { recursive: true, mode });
  },
  unlink: (p) => nodeFs.rmSync(p, { force: true }),
  removeTree: (p) => nodeFs.rmSync(p, { recursive: true, force: true }),
  list: (p) => {
    try {
      return nodeFs.readdirSync(p);
    } catch {
      return [];
    }
  },
  scan: (p, pattern) => {
    const fd = nodeFs.openSync(p, nodeFs.constants.O_RDONLY | nodeFs.constants.O_NOFOLLOW);
    const chunk = 4 * 1024 * 1024;
    const overlap = 256;
    const buf = Buffer.allocUnsafe(chunk + overlap);
    try {
      // Bytes carried over from the previous chunk, searched again: a match across the boundary is found.
      let kept = 0;
      for (let pos = 0; ; ) {
        const n = nodeFs.readSync(fd, buf, kept, chunk, pos);
        if (n === 0) return undefined;
        const total = kept + n;
        const found = pattern.exec(buf.toString("latin1", 0, total));
        if (found) return found;
        pos += n;
        const carry = Math.min(overlap, total);
        buf.copy(buf, 0, total - carry, total);
        kept = carry;
      }
    } finally {
      nodeFs.closeSync(fd);
    }
  },
  ownByRoot: (p, mode) => {
    const fd = nodeFs.openSync(p, nodeFs.constants.O_RDONLY | nodeFs.constants.O_NOFOLLOW);
    try {
      const st = nodeFs.fstatSync(fd);
      if (!st.isFile() || (st.uid === 0 && st.gid === 0 && (st.mode & 0o7777) === mode)) return false;
      nodeFs.fchownSync(fd, 0, 0);
      nodeFs.fchmodSync(fd, mode);
      nodeFs.fsyncSync(fd);
      return true;
    } finally {
      nodeFs.closeSync(fd);
    }
  },
  pinned: (dir, owner, fn) => withPinnedDir(dir, owner, fn),
};

export function readText(fs: InstallFs, path: string): string | undefined {
  return fs.exists(path) ? fs.readFile(path).toString("utf8") : undefined;
}

/** Temp file, fsync, rename, fsync of the directory: root's own directories only. */
export function atomicWrite(fs: InstallFs, path: string, data: string, mode: number): void {
  fs.writeFile(`${path}.tmp`, data, mode);
  // writeFile creates afresh with `mode`; the umask may have taken bits off.
  fs.chmod(`${path}.tmp`, mode);
  fs.fsync(`${path}.tmp`);
  fs.rename(`${path}.tmp`, path);
  fs.fsync(dirname(path));
}

/** A new link beside the old, renamed over it: the path is never without a link. */
export function switchLink(fs: InstallFs, path: string, target: string): void {
  if (fs.readlink(path) === target) return;
  fs.symlink(target, `${path}.new`);
  fs.rename(`${path}.new`, path);
  fs.fsync(dirname(path));
}
