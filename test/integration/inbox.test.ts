// Issue 11, item 4: the watched folder's crash states, each laid out on disk as a crash would leave it.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import { pino } from "pino";
import { systemClock } from "../../src/core/clock.ts";
import { OutpostError } from "../../src/core/errors.ts";
import { Inbox } from "../../src/tasks/inbox.ts";
import type { TaskResult } from "../../src/tasks/runner.ts";

describe("watched folder", () => {
  let dir: string;
  let evaluated: string[];
  let published: TaskResult[];
  let events: string[];
  let refuse: boolean;
  /** A frame's evaluation that does not end by itself (the agent dies, or stops, while it runs). */
  let stall: ((file: string) => Promise<never> | undefined) | undefined;

  beforeEach(() => {
    stall = undefined;
    dir = mkdtempSync(join(tmpdir(), "outpost-inbox-"));
    evaluated = [];
    published = [];
    events = [];
    refuse = false;
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  function inbox(settleMs = 0): Inbox {
    // The camera's side exists before the agent's first poll (the inbox makes the rest itself).
    mkdirSync(join(dir, "inbox"), { recursive: true });
    return new Inbox({
      task: "inspect",
      dir,
      settleMs,
      pollMs: 10,
      parallel: 2,
      quarantineAfter: 2,
      now: () => systemClock.mono(),
      evaluate: async (file, image) => {
        if (refuse) throw new OutpostError("QUEUE_FULL", "full");
        evaluated.push(file);
        const stalled = stall?.(file);
        if (stalled !== undefined) return stalled;
        const ok = image.toString() !== "corrupt";
        // What it judged, so that a result can be matched with the image it lies beside.
        const input = { content: image.toString() };
        return { task: "inspect", trace: `trace-${file}`, ok, input, ...(ok ? { verdict: "pass" } : {}) };
      },
      publish: (r) => {
        published.push(r);
        // Claimed images are in work/ under a name of the inbox's own, ending in `~<camera's name>`.
        const name = r.trace.slice(6);
        const inWork = readdirSync(join(dir, "work")).some((f) => f === name || f.endsWith(`~${name}`));
        events.push(`publish ${r.trace} work:${inWork}`);
      },
      commit: () => events.push("commit"),
      logger: pino({ level: "silent" }),
    });
  }

  /** Runs the inbox until `done` holds, then stops it the way the agent does. */
  async function runUntil(box: Inbox, done: () => boolean): Promise<void> {
    const controller = new AbortController();
    const running = box.run(controller.signal);
    const deadline = Date.now() + 10_000;
    while (!done()) {
      if (Date.now() > deadline) throw new Error("timed out");
      await new Promise((r) => setTimeout(r, 5));
    }
    controller.abort();
    await running;
  }

  const list = (sub: string) => readdirSync(join(dir, sub)).sort();

  it("publishes and commits each result while the image is still in work/, then moves it", async () => {
    const box = inbox();
    writeFileSync(join(dir, "inbox", "a.png"), "image a");
    writeFileSync(join(dir, "inbox", "b.png"), "corrupt");
    await runUntil(box, () => box.counts.done + box.counts.failed === 2);
    assert.deepEqual(list("done"), ["a.png", "a.png.json"]);
    assert.deepEqual(list("failed"), ["b.png", "b.png.json"]);
    assert.deepEqual(list("work"), []);
    assert.deepEqual(events.filter((e) => e.startsWith("publish")).sort(), [
      "publish trace-a.png work:true",
      "publish trace-b.png work:true",
    ]);
    assert.equal(events.filter((e) => e === "commit").length, 2);
    assert.equal(JSON.parse(readFileSync(join(dir, "done", "a.png.json"), "utf8")).trace, "trace-a.png");
  });

  it("after a crash: runs a claimed image again, republishes a stored result, finishes a half-done move", async () => {
    mkdirSync(join(dir, "work"), { recursive: true });
    mkdirSync(join(dir, "done"), { recursive: true });
    const stored = (name: string) => ({ task: "inspect", trace: `stored-${name}`, ok: true, verdict: "pass" });
    // Claimed, crashed before its result was written: nothing went out, so it runs again.
    writeFileSync(join(dir, "work", "claimed.png"), "x");
    // Result written (maybe published), crashed before the move: the same result goes out again.
    mkdirSync(join(dir, "results"), { recursive: true });
    writeFileSync(join(dir, "work", "written.png"), "x");
    writeFileSync(join(dir, "results", "written.png.json"), JSON.stringify(stored("written.png")));
    // Image moved, crashed before its result followed.
    writeFileSync(join(dir, "done", "moved.png"), "x");
    writeFileSync(join(dir, "results", "moved.png.json"), JSON.stringify(stored("moved.png")));
    const box = inbox();
    await runUntil(box, () => box.counts.done === 3);
    assert.deepEqual(evaluated, ["claimed.png"], "only the image without a result runs");
    assert.deepEqual(published.map((r) => r.trace).sort(), [
      "stored-moved.png",
      "stored-written.png",
      "trace-claimed.png",
    ]);
    assert.equal(box.counts.recovered, 2);
    assert.deepEqual(list("work"), []);
    assert.deepEqual(list("results"), []);
    assert.deepEqual(list("done"), [
      "claimed.png",
      "claimed.png.json",
      "moved.png",
      "moved.png.json",
      "written.png",
      "written.png.json",
    ]);
  });

  it("a frame named like a stored result is an image: neither its bytes stop the folder nor its JSON goes out as a verdict", async () => {
    // Claimed at a crash, as a camera named them: stored results live where no camera name lands (results/).
    mkdirSync(join(dir, "work"), { recursive: true });
    writeFileSync(join(dir, "work", "cam.png.result.json"), "\x89PNG not json at all");
    const forged = { task: "inspect", trace: "forged", ok: true, verdict: "pass" };
    writeFileSync(join(dir, "work", "forged.result.json"), JSON.stringify(forged));
    // A stored result that does not hold a result (torn, or not this task's) is not published either: its image
    // runs again.
    mkdirSync(join(dir, "results"), { recursive: true });
    writeFileSync(join(dir, "work", "torn.png"), "x");
    writeFileSync(join(dir, "results", "torn.png.json"), '{"task":"other","trace":"t","ok":true}');
    const box = inbox();
    writeFileSync(join(dir, "inbox", "next.png"), "x");
    await runUntil(box, () => box.counts.done + box.counts.failed === 4);
    assert.deepEqual(evaluated.sort(), ["cam.png.result.json", "forged.result.json", "next.png", "torn.png"]);
    assert.deepEqual(published.map((r) => r.trace).sort(), [
      "trace-cam.png.result.json",
      "trace-forged.result.json",
      "trace-next.png",
      "trace-torn.png",
    ]);
    assert.deepEqual(list("work"), []);
  });

  it("a camera that reuses one name: each frame is judged once and its result lies beside it (2 at once)", async () => {
    const box = inbox();
    const controller = new AbortController();
    const running = box.run(controller.signal);
    const frames = 60;
    const deadline = Date.now() + 20_000;
    for (let i = 0; i < frames; i++) {
      // The documented way: written elsewhere, renamed in once the previous frame of that name left inbox/.
      while (existsSync(join(dir, "inbox", "latest.png")) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 1));
      }
      writeFileSync(join(dir, "inbox", ".latest.tmp"), `frame ${i}`);
      renameSync(join(dir, "inbox", ".latest.tmp"), join(dir, "inbox", "latest.png"));
    }
    while (box.counts.done < frames && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    controller.abort();
    await running;
    const images = list("done").filter((f) => !f.endsWith(".json"));
    assert.equal(images.length, frames);
    const seen = new Set<string>();
    for (const image of images) {
      const content = readFileSync(join(dir, "done", image), "utf8");
      const result = JSON.parse(readFileSync(join(dir, "done", `${image}.json`), "utf8")) as TaskResult;
      assert.equal((result.input as { content: string }).content, content, `${image}: the result of another frame`);
      seen.add(content);
    }
    assert.equal(seen.size, frames, "a frame was lost or judged twice");
    assert.equal(published.length, frames);
  });

  it("anything but a regular file in inbox/ goes to failed/ with the reason, unread: a link to a secret, a FIFO, a folder", async () => {
    const secret = join(dir, "secret.yaml");
    writeFileSync(secret, "password: hunter2");
    mkdirSync(join(dir, "inbox"), { recursive: true });
    symlinkSync(secret, join(dir, "inbox", "link.png"));
    symlinkSync("/dev/zero", join(dir, "inbox", "zero.png"));
    execFileSync("mkfifo", [join(dir, "inbox", "fifo.png")]);
    mkdirSync(join(dir, "inbox", "folder.png"));
    const box = inbox();
    writeFileSync(join(dir, "inbox", "real.png"), "x");
    await runUntil(box, () => box.counts.done === 1 && box.counts.failed === 4);
    assert.deepEqual(
      evaluated.map((f) => f.replace(/^.*~/, "")),
      ["real.png"],
    );
    for (const name of ["link.png", "zero.png", "fifo.png", "folder.png"]) {
      const why = JSON.parse(readFileSync(join(dir, "failed", `${name}.json`), "utf8")) as {
        code: string;
        reason: string;
      };
      assert.equal(why.code, "TASK_INPUT_INVALID", name);
      assert.match(why.reason, /not a regular file/, name);
    }
    assert.equal(readFileSync(secret, "utf8"), "password: hunter2");
    assert.ok(!published.some((r) => JSON.stringify(r).includes("hunter2")));
  });

  it("a refused image stays in work/ without a result, and runs once the task takes work again", async () => {
    refuse = true;
    const box = inbox();
    const controller = new AbortController();
    const running = box.run(controller.signal);
    writeFileSync(join(dir, "inbox", "later.png"), "x");
    const deadline = Date.now() + 5000;
    while (list("work").length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, 50)); // a few polls, each refused
    assert.deepEqual(
      list("work").map((f) => f.replace(/^.*~/, "")),
      ["later.png"],
    );
    assert.deepEqual(published, []);
    refuse = false;
    while (box.counts.done < 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    controller.abort();
    await running;
    assert.deepEqual(list("done"), ["later.png", "later.png.json"]);
    assert.deepEqual(evaluated, ["later.png"]);
  });

  it("an image written in place counts once its size has held still for settle; a reused name is kept apart", async () => {
    const box = inbox(150);
    const controller = new AbortController();
    const running = box.run(controller.signal);
    const file = join(dir, "inbox", "slow.png");
    writeFileSync(file, "part 1");
    for (let i = 2; i <= 4; i++) {
      await new Promise((r) => setTimeout(r, 60));
      writeFileSync(file, `part 1..${i}`);
      assert.deepEqual(evaluated, [], `taken while still being written (write ${i})`);
    }
    const deadline = Date.now() + 5000;
    while (box.counts.done < 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(evaluated, ["slow.png"]);
    writeFileSync(file, "a second image of the same name");
    while (box.counts.done < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    controller.abort();
    await running;
    assert.deepEqual(list("done"), ["slow.png", "slow.png.1", "slow.png.1.json", "slow.png.json"]);
    assert.equal(readFileSync(join(dir, "done", "slow.png.1"), "utf8"), "a second image of the same name");
  });

  /** Waits (polling, 10 s at most) until `done` holds. */
  async function until(done: () => boolean, what: string | (() => string)): Promise<void> {
    const deadline = Date.now() + 10_000;
    while (!done()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${typeof what === "string" ? what : what()}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  it("a frame in flight at 2 crashes is quarantined with its sha256, never run a third time (issue 21, item 2)", async () => {
    // The agent "dies" while it judges poison.png: its evaluation never ends and the folder is abandoned as is
    // (no clean stop runs), as a SIGKILL or an OOM kill leaves it.
    stall = (file) => (file === "poison.png" ? new Promise<never>(() => {}) : undefined);
    mkdirSync(join(dir, "inbox"));
    writeFileSync(join(dir, "inbox", "poison.png"), "poison bytes");
    for (let run = 1; run <= 2; run++) {
      const dead = new AbortController();
      void inbox().run(dead.signal);
      await until(() => evaluated.filter((f) => f === "poison.png").length === run, `run ${run} of poison.png`);
      dead.abort(); // its loop ends; the stalled job never settles, so nothing of a clean stop happens
    }
    stall = undefined;
    const box = inbox();
    const controller = new AbortController();
    const running = box.run(controller.signal);
    writeFileSync(join(dir, "inbox", "next.png"), "x");
    await until(() => box.counts.done === 1 && box.counts.quarantined === 1, "the next frame and the quarantine");
    controller.abort();
    await running;
    assert.deepEqual(evaluated, ["poison.png", "poison.png", "next.png"], "poison.png ran twice, never a third time");
    assert.deepEqual(list("failed"), ["poison.png", "poison.png.json"]);
    const why = JSON.parse(readFileSync(join(dir, "failed", "poison.png.json"), "utf8"));
    assert.equal(why.code, "TASK_INPUT_QUARANTINED");
    assert.match(why.reason, /running at 2 crashes/);
    assert.equal(why.input.sha256, createHash("sha256").update("poison bytes").digest("hex"));
    assert.deepEqual(list("work"), []);
  });

  it("a clean stop while a frame is judged is not a crash: stopped 3 times, the frame still runs", async () => {
    let abortNow = () => {};
    stall = (file) =>
      file === "slow.png"
        ? new Promise<never>((_, reject) => {
            abortNow = () => reject(new OutpostError("TASK_ABORTED", "the agent is stopping"));
          })
        : undefined;
    mkdirSync(join(dir, "inbox"));
    writeFileSync(join(dir, "inbox", "slow.png"), "x");
    for (let run = 1; run <= 3; run++) {
      const controller = new AbortController();
      const running = inbox().run(controller.signal);
      await until(() => evaluated.length === run, `run ${run}`);
      controller.abort();
      abortNow();
      await running;
      assert.match(list("work").join(), /s~slow\.png$/, "put back, marked as a clean stop");
    }
    stall = undefined;
    const box = inbox();
    await runUntil(box, () => box.counts.done === 1);
    assert.deepEqual(list("done"), ["slow.png", "slow.png.json"]);
    assert.equal(box.counts.quarantined, 0);
  });

  it("a folder that cannot make progress makes the task unhealthy, with the reason, until it can (item 3)", async () => {
    const box = inbox();
    const controller = new AbortController();
    const running = box.run(controller.signal);
    try {
      await until(() => existsSync(join(dir, "done")), "the folder's subdirectories");
      // done/ is not a folder: a judged frame cannot leave work/ (tests run as root: a mode would not stop it).
      rmSync(join(dir, "done"), { recursive: true });
      writeFileSync(join(dir, "done"), "not a folder");
      writeFileSync(join(dir, "inbox", "a.png"), "x");
      await until(() => !box.health().ok, "unhealthy");
      assert.match(box.health().reason ?? "", /watched folder .*: a pass failed: done\/ is not a directory \(a file\)/);
      rmSync(join(dir, "done"));
      mkdirSync(join(dir, "done"));
      writeFileSync(join(dir, "inbox", "b.png"), "x");
      await until(() => box.health().ok, "healthy once a frame completes");
      // The inbox itself gone: every pass fails until it is back.
      rmSync(join(dir, "inbox"), { recursive: true });
      await until(() => !box.health().ok, "unhealthy without an inbox");
      assert.match(box.health().reason ?? "", /a pass failed: ENOENT/);
      mkdirSync(join(dir, "inbox"));
      await until(
        () => box.health().ok,
        () => `healthy again (${box.health().reason})`,
      );
    } finally {
      controller.abort();
      await running;
    }
  });

  it("the attack on this fix: names with a newline or of 240 bytes, a frame named x.json, links for folders, a FIFO in results/", async () => {
    const tricky = ["bad\nframe.png", `${"k".repeat(240)}.png`];
    // A newline or an over-long name still counts its crashes: both stall twice and are quarantined.
    stall = (file) => (file.startsWith("bad") || file.startsWith("kkk") ? new Promise<never>(() => {}) : undefined);
    mkdirSync(join(dir, "inbox"));
    for (const n of tricky) writeFileSync(join(dir, "inbox", n), n);
    for (let run = 1; run <= 2; run++) {
      const dead = new AbortController();
      void inbox().run(dead.signal);
      // Returned frames run one at a time at a start: wait for the one that runs first.
      await until(() => evaluated.length >= (run === 1 ? 2 : 3), `run ${run}`);
      dead.abort();
    }
    // A third start: the first returned frame ran (and "crashed") again; the other reaches its limit now.
    for (let run = 3; run <= 4; run++) {
      const dead = new AbortController();
      void inbox().run(dead.signal);
      await until(() => list("work").length === 0 || evaluated.length >= run + 1, `run ${run}`);
      dead.abort();
    }
    stall = undefined;
    const box = inbox();
    const controller = new AbortController();
    const running = box.run(controller.signal);
    try {
      // The frame is moved, then its note written: both notes, not only an empty work/ (a busy machine saw 1).
      const quarantined = () => list("failed").filter((f) => f.endsWith(".json"));
      await until(() => list("work").length === 0 && quarantined().length >= 2, "both quarantined");
      const notes = quarantined();
      assert.equal(notes.length, 2, list("failed").join());
      for (const n of notes)
        assert.equal(JSON.parse(readFileSync(join(dir, "failed", n), "utf8")).code, "TASK_INPUT_QUARANTINED");
      // A frame named x.json after frame x: x's result in done/ is kept.
      writeFileSync(join(dir, "inbox", "x"), "frame x");
      await until(() => box.counts.done === 1, "frame x");
      writeFileSync(join(dir, "inbox", "x.json"), "a frame named x.json");
      await until(() => box.counts.done === 2, "frame x.json");
      assert.equal(JSON.parse(readFileSync(join(dir, "done", "x.json"), "utf8")).trace, "trace-x");
      // done/ replaced by a link to elsewhere: nothing is written there, and the folder is unhealthy.
      const elsewhere = join(dir, "elsewhere");
      mkdirSync(elsewhere);
      renameSync(join(dir, "done"), join(dir, "done.real"));
      symlinkSync(elsewhere, join(dir, "done"));
      writeFileSync(join(dir, "inbox", "z.png"), "z");
      await until(() => !box.health().ok, "unhealthy with done/ a link");
      assert.match(box.health().reason ?? "", /done\/ is not a directory \(a symlink\)/);
      assert.deepEqual(readdirSync(elsewhere), []);
    } finally {
      controller.abort();
      await running;
    }
    // A FIFO (and a link to /dev/zero) in results/ at start: neither read; the start goes on.
    rmSync(join(dir, "done"));
    renameSync(join(dir, "done.real"), join(dir, "done"));
    execFileSync("mkfifo", [join(dir, "results", "fifo.png.json")]);
    symlinkSync("/dev/zero", join(dir, "results", "zero.png.json"));
    const next = inbox();
    await runUntil(next, () => next.counts.done >= 1);
    assert.deepEqual(list("results"), []);
  });

  it("only a frame that was running counts a crash: one claimed and waiting, or running beside the killer, is not quarantined", async () => {
    stall = (file) => (file === "killer.png" ? new Promise<never>(() => {}) : new Promise<never>(() => {}));
    mkdirSync(join(dir, "inbox"));
    for (const n of ["innocent.png", "killer.png", "waiting.png"]) writeFileSync(join(dir, "inbox", n), n);
    // Crash 1: innocent and killer run (2 at once), waiting is claimed and waits for a slot.
    const first = new AbortController();
    void inbox().run(first.signal);
    await until(() => evaluated.length === 2, "two running");
    first.abort();
    // Crash 2: at the start, returned frames run one at a time; only killer.png stalls now.
    stall = (file) => (file === "killer.png" ? new Promise<never>(() => {}) : undefined);
    const second = new AbortController();
    void inbox().run(second.signal);
    await until(() => evaluated.filter((f) => f === "killer.png").length === 2, "killer again");
    second.abort();
    stall = undefined;
    const box = inbox();
    await runUntil(box, () => list("work").length === 0 && box.counts.quarantined === 1 && box.counts.done === 1);
    assert.deepEqual(list("failed"), ["killer.png", "killer.png.json"]);
    assert.ok(list("done").includes("innocent.png") && list("done").includes("waiting.png"), list("done").join());
  });
});
