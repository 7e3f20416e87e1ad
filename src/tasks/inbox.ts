import { createHash } from "node:crypto";
import { mkdirSync } from "node:fs";
import { lstat, readdir, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { sleep } from "../core/clock.ts";
import { errorMessage, isOutpostError } from "../core/errors.ts";
import { writeFileAtomically } from "../core/files.ts";
import type { Logger } from "../core/logger.ts";
import {
  cameraName,
  checkDirs,
  claimName,
  claimOf,
  exists,
  freeName,
  MAX_FRAME_BYTES,
  notAFrame,
  readChecked,
  readStoredResult,
  shortName,
} from "./inbox-files.ts";
import type { TaskResult } from "./runner.ts";

export interface InboxOptions {
  task: string;
  dir: string;
  settleMs: number;
  pollMs: number;
  /** Images processed at once (the pool's size: more would only wait in its queue). */
  parallel: number;
  /** A frame found in work/ without a result at this many starts (it was in flight at each crash) is quarantined. */
  quarantineAfter: number;
  evaluate(file: string, image: Uint8Array): Promise<TaskResult>;
  publish(result: TaskResult): void;
  /** Writes what was published to the outbox's storage: a result must not be forgotten once its image moves. */
  commit(): void;
  logger: Logger;
  /** The monotonic clock (ms): how long a frame has held still. */
  now(): number;
}

/**
 * A watched folder: a camera drops images into `inbox/`; each is processed exactly once and ends in `done/`
 * (a verdict) or `failed/` (no verdict: the image does not decode, the model fails) beside a `.json` result.
 *
 * Exactly once, across crashes: an image is claimed by renaming it into `work/`; its result is written to
 * `results/<name>.json` (fsynced) before it is published, the outbox commits it to its own storage, then the
 * image moves, then its result. A start finds in `work/` images, whatever their names (a camera's
 * `x.result.json` is an image too), and in `results/`, where no camera name can land, stored results: one that
 * validates as this task's result is published again (same trace id) and its moves finished, never a second,
 * different result; an image without one runs again (nothing was published).
 */
export class Inbox {
  private readonly o: InboxOptions;
  private readonly seen = new Map<string, { size: number; mtimeMs: number; since: number }>();
  private readonly inFlight = new Set<Promise<void>>();
  /** Claimed images that were refused (queue full, breaker open): tried again at every poll. */
  private readonly retry = new Set<string>();
  readonly counts = { done: 0, failed: 0, recovered: 0, quarantined: 0 };
  /** Claims made by this process (with the start time, unique across restarts). */
  private claims = 0;
  private readonly epoch = Date.now().toString(36);
  /** Moves out of work/ one at a time: two frames of one name must not pick the same free name. */
  private moving: Promise<void> = Promise.resolve();
  /**
   * Why the folder cannot make progress: a pass that fails (the folder gone, unreadable), cleared by the next
   * pass that works; a claim or a move that fails (for a reason other than "gone"), cleared by the next frame
   * that completes.
   */
  private readonly problems: { pass?: string; frame?: string } = {};

  constructor(options: InboxOptions) {
    this.o = options;
  }

  /** The folder's subdirectories; a folder that cannot be made yet (a mount not there) is retried, never fatal. */
  private async prepare(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      try {
        for (const sub of ["inbox", "work", "results", "done", "failed"])
          mkdirSync(this.path(sub), { recursive: true });
        this.problems.pass = undefined;
        return;
      } catch (err) {
        this.stuck("pass", "the folder cannot be made (retrying)", err);
        await sleep(Math.max(this.o.pollMs, 5000), signal);
      }
    }
  }

  private path(sub: string, name = ""): string {
    return join(this.o.dir, sub, name);
  }

  /** Unhealthy while the folder cannot make progress: frames would pile up unjudged, silently. */
  health(): { ok: boolean; reason?: string } {
    const problem = this.problems.pass ?? this.problems.frame;
    return problem ? { ok: false, reason: `watched folder ${this.o.dir}: ${problem}` } : { ok: true };
  }

  private stuck(kind: "pass" | "frame", what: string, err: unknown): void {
    this.problems[kind] = `${what}: ${errorMessage(err)}`;
    this.o.logger.error({ dir: this.o.dir, err: errorMessage(err) }, `watched folder: ${what}`);
  }

  async run(signal: AbortSignal): Promise<void> {
    await this.prepare(signal);
    if (signal.aborted) return;
    try {
      await this.recover(signal);
    } catch (err) {
      this.stuck("pass", "what the last run left cannot be recovered", err);
    }
    while (!signal.aborted) {
      try {
        await this.tick(signal);
        this.problems.pass = undefined;
      } catch (err) {
        this.stuck("pass", "a pass failed", err);
      }
      await sleep(this.o.pollMs, signal);
    }
    // Images in hand finish (the pool drains them within the shutdown deadline) or stay in work/ for the next
    // start, marked as put back by a clean stop (not counted as returns from a crash).
    await Promise.allSettled(this.inFlight);
    for (const name of this.retry) await this.putBack(name);
    this.retry.clear();
  }

  /** A frame a clean stop leaves in work/: renamed to say so (no fsync: at worst it counts as one crash). */
  private async putBack(name: string): Promise<void> {
    const c = claimOf(name);
    if (c.stopped) return;
    const back = claimName({ ...c, started: false, stopped: true });
    await rename(this.path("work", name), this.path("work", back)).catch(() => {});
  }

  /**
   * What a crash left: stored results to publish again and move, images in work/ to run again. A frame that was
   * running (`g`) counts a return; at `quarantineAfter` it goes to failed/. The others that were running run
   * again one at a time, first, so that only the one that kills the agent reaches the limit; frames that never
   * started run as usual. One entry that cannot be handled is reported and skipped, never the rest.
   */
  private async recover(signal: AbortSignal): Promise<void> {
    await checkDirs(this.o.dir);
    const names = (await readdir(this.path("work"))).filter((n) => !n.startsWith(".")).sort();
    const recovered = new Set<string>();
    const stored = (await readdir(this.path("results"))).sort();
    // A quarantine's note not yet beside its frame (a crash between the two renames) is of no more use.
    for (const note of stored.filter((n) => n.endsWith(".quarantine")))
      await rm(this.path("results", note), { force: true });
    for (const file of stored.filter((n) => n.endsWith(".json"))) {
      const image = file.slice(0, -".json".length);
      try {
        const result = await readStoredResult(this.path("results", file), this.o.task);
        if (!result) {
          // Torn, not a result, or not a file: nothing can have been published from it; its image runs again.
          this.o.logger.warn({ file: image }, "watched folder: a stored result does not hold a result; dropped");
          await rm(this.path("results", file), { force: true });
          continue;
        }
        this.o.publish(result);
        this.o.commit();
        this.counts.recovered += 1;
        recovered.add(image);
        await this.finish(image, result, names.includes(image));
      } catch (err) {
        this.stuck("frame", `the stored result ${file} cannot be recovered`, err);
      }
    }
    const later: string[] = [];
    for (const name of names) {
      if (signal.aborted) return;
      if (recovered.has(name)) continue;
      try {
        const c = claimOf(name);
        const crashed = c.started && !c.stopped;
        const returns = c.returns + (crashed ? 1 : 0);
        if (returns >= this.o.quarantineAfter) {
          await this.quarantine(
            "work",
            name,
            `running at ${returns} crashes of the agent: quarantined, not run again`,
            "TASK_INPUT_QUARANTINED",
          );
          continue;
        }
        // A fresh claim: never renamed over another entry (two legacy names can map to one claim).
        const next = claimName({
          ...c,
          claim: `${this.epoch}-${++this.claims}`,
          returns,
          started: false,
          stopped: false,
        });
        await rename(this.path("work", name), this.path("work", next));
        if (crashed) await this.process(next, signal);
        else later.push(next);
      } catch (err) {
        this.stuck("frame", `${cameraName(name)} cannot be recovered`, err);
      }
    }
    for (const name of later) {
      if (signal.aborted) return;
      await this.start(name, signal);
    }
  }

  private async tick(signal: AbortSignal): Promise<void> {
    await checkDirs(this.o.dir);
    for (const name of [...this.retry]) {
      if (signal.aborted) return;
      this.retry.delete(name);
      await this.start(name, signal);
    }
    const names = (await readdir(this.path("inbox"))).filter((n) => !n.startsWith(".")).sort();
    const now = this.o.now();
    const present = new Set(names);
    for (const name of this.seen.keys()) if (!present.has(name)) this.seen.delete(name);
    for (const name of names) {
      if (signal.aborted) return;
      // Only regular files are frames: a link (to /dev/zero, to a secret), a FIFO or a folder is never read.
      let st: Awaited<ReturnType<typeof lstat>>;
      try {
        st = await lstat(this.path("inbox", name));
      } catch {
        continue; // gone meanwhile
      }
      const why = st.isFile() ? undefined : notAFrame(st);
      if (why) {
        await this.quarantine("inbox", name, why);
        continue;
      }
      if (!(await this.settled(name, now))) continue;
      // Claimed by a rename to a name of our own: the camera's file is ours from here on, whatever crashes, and
      // the next frame of the same name never lands on it.
      const work = `${this.epoch}-${++this.claims}~${shortName(name)}`;
      try {
        await rename(this.path("inbox", name), this.path("work", work));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT" && !(await exists(this.path("inbox", name)))) continue;
        this.stuck("frame", `${name} cannot be claimed`, err);
        continue;
      }
      this.seen.delete(name);
      await this.start(work, signal);
    }
  }

  /** Processes a claimed image once a slot is free (at most `parallel` at once). */
  private async start(name: string, signal: AbortSignal): Promise<void> {
    while (this.inFlight.size >= this.o.parallel && !signal.aborted) await Promise.race(this.inFlight);
    // Every job's promise is handled: a failed move is logged, the image stays in work/ for the next start.
    const job = this.process(name, signal)
      .catch((err) => this.stuck("frame", `${cameraName(name)} cannot be moved out of work/`, err))
      .finally(() => this.inFlight.delete(job));
    this.inFlight.add(job);
  }

  /** Counted once renamed in (settle 0), or once its size and mtime have held still for `settleMs`. */
  private async settled(name: string, now: number): Promise<boolean> {
    if (this.o.settleMs === 0) return true;
    let s: { size: number; mtimeMs: number };
    try {
      s = await stat(this.path("inbox", name));
    } catch {
      return false;
    }
    const prev = this.seen.get(name);
    if (!prev || prev.size !== s.size || prev.mtimeMs !== s.mtimeMs) {
      this.seen.set(name, { size: s.size, mtimeMs: s.mtimeMs, since: now });
      return false;
    }
    return now - prev.since >= this.o.settleMs;
  }

  private async process(claimed: string, signal: AbortSignal): Promise<void> {
    let image: Uint8Array;
    try {
      const read = await this.readFrame(claimed);
      if (typeof read === "string") {
        await this.quarantine("work", claimed, read);
        return;
      }
      image = read;
    } catch (err) {
      this.o.logger.warn({ file: claimed, err: errorMessage(err) }, "watched folder: cannot read a claimed image");
      return;
    }
    // Marked as running (a rename, no fsync): a start that finds it so knows it was running at a crash.
    const c = claimOf(claimed);
    const name = claimName({ ...c, started: true, stopped: false });
    if (name !== claimed) await rename(this.path("work", claimed), this.path("work", name));
    let result: TaskResult;
    try {
      result = await this.o.evaluate(cameraName(name), image);
    } catch (err) {
      // Refused or cancelled (queue full, breaker open, stopping): it stays in work/, tried again at the next
      // poll, or at the next start (put back: a clean stop is not a crash), no longer marked as running.
      const idle = claimName({ ...c, started: false, stopped: signal.aborted });
      await rename(this.path("work", name), this.path("work", idle)).catch(() => {});
      if (!signal.aborted) {
        this.retry.add(idle);
        this.o.logger.warn({ file: idle, code: isOutpostError(err) ? err.code : undefined }, "image not run yet");
      }
      return;
    }
    writeFileAtomically(this.path("results", `${name}.json`), `${JSON.stringify(result)}\n`, 0o644);
    this.o.publish(result);
    this.o.commit();
    await this.finish(name, result, true);
  }

  /**
   * A claimed frame's bytes, read through one descriptor opened O_NOFOLLOW|O_NONBLOCK and checked with fstat
   * (a regular file within the bound); or why it is not a frame.
   */
  private readFrame(name: string): Promise<Uint8Array | string> {
    return this.readChecked("work", name, MAX_FRAME_BYTES);
  }

  /** A file of the folder read through one checked descriptor (regular, at most `max` bytes), or why not. */
  private readChecked(sub: string, name: string, max: number): Promise<Uint8Array | string> {
    return readChecked(this.path(sub, name), max);
  }

  /**
   * Something that is not a frame, or a frame that was in flight at too many crashes, goes to failed/ with the
   * reason beside it (and a frame's sha256, read through the same checked descriptor); never run again.
   */
  private quarantine(
    sub: "inbox" | "work",
    name: string,
    reason: string,
    code: "TASK_INPUT_INVALID" | "TASK_INPUT_QUARANTINED" = "TASK_INPUT_INVALID",
  ): Promise<void> {
    const camera = sub === "inbox" ? shortName(name) : cameraName(name);
    const next = this.serially(async () => {
      await checkDirs(this.o.dir, [sub, "results", "failed"]);
      let input: { sha256: string; bytes: number } | undefined;
      if (code === "TASK_INPUT_QUARANTINED") {
        const bytes = await this.readFrame(name).catch(() => undefined);
        if (bytes instanceof Uint8Array)
          input = { sha256: createHash("sha256").update(bytes).digest("hex"), bytes: bytes.byteLength };
      }
      const why = {
        task: this.o.task,
        file: camera,
        ok: false,
        code,
        reason,
        ...(input ? { input: { ...input, file: camera } } : {}),
      };
      // Written where no camera name lands (results/, under a name no stored result has), then renamed beside
      // the frame: a temporary file in failed/ could be a camera's frame of that name.
      const note = `${this.epoch}-q${++this.claims}.quarantine`;
      writeFileAtomically(this.path("results", note), `${JSON.stringify(why)}\n`, 0o644);
      const target = await freeName(this.path("failed"), camera);
      await rename(this.path(sub, name), this.path("failed", target));
      await rename(this.path("results", note), this.path("failed", `${target}.json`));
      this.counts.failed += 1;
      this.counts.quarantined += 1;
      this.problems.frame = undefined;
      this.o.logger.warn({ file: camera, code, reason }, "watched folder: quarantined in failed/");
    });
    next.catch((err) => this.stuck("frame", `${camera} cannot be moved to failed/`, err));
    return next;
  }

  /** Moves a claimed image and its result out of work/, one image at a time (its caller reports a failure). */
  private finish(work: string, result: TaskResult, imagePresent: boolean): Promise<void> {
    return this.serially(() => this.move(work, result, imagePresent));
  }

  /** Runs `fn` after every move before it: two frames of one name must not pick the same free name. */
  private serially(fn: () => Promise<void>): Promise<void> {
    const next = this.moving.then(fn);
    this.moving = next.catch(() => {});
    return next;
  }

  private async move(name: string, result: TaskResult, imagePresent: boolean): Promise<void> {
    const to = result.ok ? "done" : "failed";
    await checkDirs(this.o.dir, ["work", "results", to]);
    // A half-done move (the image went, its result did not) finishes beside that image.
    const target = await freeName(this.path(to), cameraName(name), !imagePresent);
    // Image first, then its result: a crash between leaves the result in results/, which the next start
    // publishes again and moves; never an image in work/ whose result already left.
    if (imagePresent) await rename(this.path("work", name), this.path(to, target));
    await rename(this.path("results", `${name}.json`), this.path(to, `${target}.json`));
    this.counts[result.ok ? "done" : "failed"] += 1;
    this.problems.frame = undefined;
  }
}
