import {
  closeSync,
  constants,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  readSync,
  renameSync,
  rmSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { keptLine, MAX_LINE } from "./log-ring.ts";

/** Where the tails are, under the state directory. */
export const TAIL_DIR = "logs";
/** Each of the two files of a run's tail: at most twice this is kept of a run. */
export const TAIL_FILE_BYTES = 256 * 1024;
const CURRENT = "current.log";
const OLDER = "current.1.log";
const PREVIOUS = "previous.log";
const PREVIOUS_OLDER = "previous.1.log";
/** The message of the line `outpost exit-record` (the unit's ExecStopPost=) adds once the process has ended. */
export const EXIT_LINE_MSG = "the process ended";

/**
 * The tail of this run's log, in the state directory, for the next run to show (`ctl logs --previous`): each
 * line is written as it is logged (an unclean end, a SIGKILL or an OOM kill, still leaves every line before
 * it), into two files of at most 256 KiB that take turns. At start, the run before's tail becomes the previous
 * one. Under systemd, the unit's ExecStopPost= adds systemd's word on the ending as the tail's last line: in the
 * tail itself, so that it always lands beside the lines of the run it speaks of (a run killed before it opened
 * its tail adds to the one before, where the reader sees both endings).
 */
export class LogTail {
  private fd: number | undefined;
  private bytes = 0;
  private readonly dir: string;
  /** Set when a write failed (a full or read-only disk): the tail stops; the logs go on. */
  failed: string | undefined;
  written = 0;

  private constructor(dir: string) {
    this.dir = dir;
  }

  /** Starts this run's tail; undefined (and nothing changed) when the directory cannot be made. */
  static open(stateDir: string): LogTail | undefined {
    const dir = join(stateDir, TAIL_DIR);
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      // lstat, not exists: a link (dangling or not) planted under a tail's name is moved aside like a file.
      const present = (name: string) => {
        try {
          lstatSync(join(dir, name));
          return true;
        } catch {
          return false;
        }
      };
      const move = (from: string, to: string) => {
        if (present(from)) renameSync(join(dir, from), join(dir, to));
        else rmSync(join(dir, to), { force: true });
      };
      // Only a run that wrote a tail hands it on: the previous one stays until another run replaces it.
      if (present(CURRENT)) {
        move(OLDER, PREVIOUS_OLDER);
        move(CURRENT, PREVIOUS);
      }
      const tail = new LogTail(dir);
      tail.reopen();
      return tail;
    } catch {
      return undefined;
    }
  }

  write(line: string): void {
    if (this.fd === undefined) return;
    // A write per line on the event loop, to flash: the tail takes info and above (a run's end, its warnings
    // and errors); debug and trace lines stay in the ring, which keeps them all.
    if (line.startsWith('{"level":"debug"') || line.startsWith('{"level":"trace"')) return;
    const text = line.length > MAX_LINE ? `${keptLine(line)}\n` : line;
    try {
      const n = writeSync(this.fd, text);
      // A short write (the disk full) would join this line to the next: the tail stops here.
      if (n < Buffer.byteLength(text)) throw Object.assign(new Error("short write"), { code: "ENOSPC" });
      this.bytes += n;
      this.written += n;
      if (this.bytes >= TAIL_FILE_BYTES) {
        closeSync(this.fd);
        this.fd = undefined;
        renameSync(join(this.dir, CURRENT), join(this.dir, OLDER));
        this.reopen();
      }
    } catch (err) {
      // Nothing may be logged from inside the logger: the failure is kept for describe.
      this.failed = (err as NodeJS.ErrnoException).code ?? String(err);
      if (this.fd !== undefined) closeSync(this.fd);
      this.fd = undefined;
    }
  }

  private reopen(): void {
    const flags =
      constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_APPEND | constants.O_NOFOLLOW;
    this.fd = openSync(join(this.dir, CURRENT), flags, 0o600);
    this.bytes = 0;
  }
}

/** At most this much of a previous tail file is read (a file that grew past its bound is read from its end). */
const READ_CAP = TAIL_FILE_BYTES + 64 * 1024;

/**
 * A file of the agent's own directory, read through one descriptor opened without following links, capped:
 * past `cap`, its last `cap` bytes. "" when it is missing, a link or not a regular file.
 */
export function readCapped(path: string, cap = READ_CAP): string {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return "";
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) return "";
    const size = Math.min(st.size, cap);
    const buffer = Buffer.alloc(size);
    let got = 0;
    while (got < size) {
      const n = readSync(fd, buffer, got, size - got, st.size - size + got);
      if (n === 0) break;
      got += n;
    }
    return buffer.subarray(0, got).toString("utf8");
  } finally {
    closeSync(fd);
  }
}

/** The previous run's tail, oldest line first. */
export function previousTail(stateDir: string): string[] {
  const dir = join(stateDir, TAIL_DIR);
  const text = readCapped(join(dir, PREVIOUS_OLDER)) + readCapped(join(dir, PREVIOUS));
  // A file read from its end may start inside a line; a line cut by the end of a crash is kept.
  return text.split("\n").filter((l) => l !== "");
}

/** Adds systemd's word on the ending to the current tail (made if the run died before it made one). */
export function appendExitLine(stateDir: string, fields: Record<string, string | null>): void {
  const dir = join(stateDir, TAIL_DIR);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // O_NONBLOCK: a FIFO planted there fails at once (ENXIO) instead of holding ExecStopPost= until its timeout.
  const flags =
    constants.O_WRONLY | constants.O_CREAT | constants.O_APPEND | constants.O_NOFOLLOW | constants.O_NONBLOCK;
  const fd = openSync(join(dir, CURRENT), flags, 0o600);
  try {
    if (!fstatSync(fd).isFile()) return;
    const line = { level: "info", time: new Date().toISOString(), component: "systemd", ...fields, msg: EXIT_LINE_MSG };
    writeSync(fd, `${JSON.stringify(line)}\n`);
  } finally {
    closeSync(fd);
  }
}
