// Issue 11, item 1: the worker pool with real worker threads. Each fault is injected more than once, with the
// pool back at full size and other tasks completing between.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { Worker } from "node:worker_threads";
import { pino } from "pino";
import { isOutpostError } from "../../src/core/errors.ts";
import { workerThreads } from "../../src/core/threads.ts";
import { type PoolOptions, WorkerPool } from "../../src/tasks/pool.ts";
import { ROOT } from "../helpers/agent-process.ts";
import { waitUntil } from "../helpers/wait.ts";

/** A worker speaking the pool's protocol, with one task type per way a task can go wrong. */
const SOURCE = `
const { parentPort } = require("node:worker_threads");
const handlers = {
  echo: (x) => x,
  thread: () => require("node:worker_threads").threadId,
  sleep: (ms) => new Promise((r) => setTimeout(() => r(ms), ms)),
  throws: () => { throw Object.assign(new Error("bad input"), { code: "E_INPUT" }); },
  loop: () => { for (;;) {} },
  alloc: () => { const keep = []; for (;;) keep.push(new Array(1e5).fill(Math.random())); },
  exit: () => process.exit(3),
  crash: () => { setImmediate(() => { throw new Error("thrown outside the task"); }); return new Promise(() => {}); },
  native: ({ addon, seconds }) => { require(addon).block(seconds); return "woke"; },
  // Says it loads, loads for loadMs (a runtime, a model), says it is ready, then works for runMs.
  staged: async ({ loadMs, runMs }, id) => {
    parentPort.postMessage({ id, loading: true });
    await new Promise((r) => setTimeout(r, loadMs));
    parentPort.postMessage({ id, ready: true });
    await new Promise((r) => setTimeout(r, runMs));
    return "done";
  },
};
// As worker.ts: tasks run one at a time in the order they came (a busy worker may be sent its next one ahead),
// and one not started is skipped when the pool cancels it.
let chain = Promise.resolve();
const waiting = new Set();
const cancelled = new Set();
let started = 0;
handlers.started = () => started;
// Answers, then throws outside any task: the worker dies between tasks.
handlers.answerThenCrash = (x) => { setImmediate(() => { throw new Error("crashed after answering"); }); return x; };
// Throws outside the task as soon as it starts: the worker dies right after answering the task before it.
handlers.crashNow = () => { queueMicrotask(() => { throw new Error("crashed at once"); }); return new Promise(() => {}); };
// Sleeps, then says how many tasks this worker holds that it has not started (sent ahead to it meanwhile).
handlers.held = async (ms) => { await new Promise((r) => setTimeout(r, ms)); return waiting.size; };
parentPort.on("message", (message) => {
  // A profile (worker-profile.ts) answered after its length, as worker.ts does.
  if (message.profile) {
    const { id, ms } = message.profile;
    setTimeout(() => parentPort.postMessage({ profiled: id, ok: true, value: "profiled" }), ms);
    return;
  }
  if (message.cancel !== undefined) {
    if (waiting.has(message.cancel)) cancelled.add(message.cancel);
    return;
  }
  const { id, type, input } = message;
  waiting.add(id);
  chain = chain.then(async () => {
    waiting.delete(id);
    if (cancelled.delete(id)) return parentPort.postMessage({ id, skipped: true });
    started += 1;
    try {
      parentPort.postMessage({ id, ok: true, value: await handlers[type](input, id) });
    } catch (e) {
      parentPort.postMessage({ id, ok: false, error: { message: String(e && e.message), code: e && e.code } });
    }
  });
});
`;

const silent = pino({ level: "silent" });

function pool(over: Partial<PoolOptions> = {}): WorkerPool {
  return new WorkerPool({
    source: SOURCE,
    size: 2,
    maxQueue: 8,
    resourceLimits: { maxOldGenerationSizeMb: 32, maxYoungGenerationSizeMb: 8 },
    breaker: { failures: 1000, openMs: 1000 },
    logger: silent,
    ...over,
  });
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "ok";
  } catch (err) {
    return isOutpostError(err) ? err.code : `not an OutpostError: ${String(err)}`;
  }
}

describe("worker pool", () => {
  let dir: string;
  let addon: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "outpost-pool-"));
    addon = join(dir, "block.node");
    execFileSync("gcc", ["-O2", "-fPIC", "-shared", "-o", addon, join(ROOT, "test", "fixtures", "native", "block.c")]);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("starts no worker until a task comes, then at most `size`; reports queue and run time", async () => {
    const p = pool();
    assert.equal(p.stats().workers, 0);
    const threads = workerThreads();
    const results = await Promise.all([1, 2, 3, 4, 5].map((i) => p.run("echo", { i }, { timeoutMs: 5000 })));
    assert.deepEqual(
      results.map((r) => r.value),
      [1, 2, 3, 4, 5].map((i) => ({ i })),
    );
    assert.equal(p.stats().workers, 2);
    // Issue 24 item 9: the resource watch's `workers` was a constant 0; it counts the process's threads now.
    assert.equal(workerThreads(), threads + 2);
    assert.ok(results.every((r) => r.queueMs >= 0 && r.runMs >= 0));
    await p.close(AbortSignal.timeout(5000));
    assert.equal(p.stats().workers, 0);
    await waitUntil(() => workerThreads() === threads, 5000, "the threads exited");
  });

  it("a task that throws, loops, passes its heap limit, exits or crashes fails alone with its code, three times over", async () => {
    const p = pool();
    for (let round = 0; round < 3; round++) {
      const neighbours = [p.run("sleep", 50, { timeoutMs: 10_000 }), p.run("echo", round, { timeoutMs: 10_000 })];
      assert.equal(await code(p.run("throws", null, { timeoutMs: 5000 })), "TASK_FAILED");
      assert.equal(await code(p.run("loop", null, { timeoutMs: 300 })), "TASK_TIMEOUT");
      assert.equal(await code(p.run("alloc", null, { timeoutMs: 20_000 })), "TASK_OUT_OF_MEMORY");
      assert.equal(await code(p.run("exit", null, { timeoutMs: 5000 })), "TASK_EXITED");
      assert.equal(await code(p.run("crash", null, { timeoutMs: 5000 })), "TASK_CRASHED");
      assert.deepEqual(
        (await Promise.all(neighbours)).map((r) => r.value),
        [50, round],
      );
      // Back to full size, and working.
      await Promise.all([p.run("echo", 1, { timeoutMs: 5000 }), p.run("sleep", 20, { timeoutMs: 5000 })]);
      assert.equal(p.stats().workers, 2);
    }
    const s = p.stats();
    assert.equal(s.replaced, 12, "loop, alloc, exit and crash replace their worker; a task that throws does not");
    assert.equal(s.abandoned, 0);
    await p.close(AbortSignal.timeout(5000));
  });

  it("loading (a runtime, a model) has its own time: the task's timeout starts when the worker says ready", async () => {
    const p = pool();
    const staged = (loadMs: number, runMs: number, loadTimeoutMs?: number) =>
      code(
        p.run(
          "staged",
          { loadMs, runMs },
          { timeoutMs: 150, ...(loadTimeoutMs === undefined ? {} : { loadTimeoutMs }) },
        ),
      );
    for (let round = 0; round < 3; round++) {
      assert.equal(await staged(400, 20, 2000), "ok", "a slow load within loadTimeoutMs");
      assert.equal(await staged(20, 400, 2000), "TASK_TIMEOUT", "the work itself past timeoutMs");
      assert.equal(await staged(400, 20), "TASK_TIMEOUT", "without loadTimeoutMs, the timeout covers the load");
      assert.equal(await staged(3000, 20, 500), "TASK_TIMEOUT", "never ready within loadTimeoutMs + timeoutMs");
    }
    await p.close(AbortSignal.timeout(5000));
    // A worker that has answered a task says `loading` when a task needs a load; one that says nothing has its
    // timeout alone, load bound or not.
    const one = pool({ size: 1 });
    await one.run("echo", 1, { timeoutMs: 5000 });
    assert.equal(
      await code(one.run("sleep", 400, { timeoutMs: 150, loadTimeoutMs: 2000 })),
      "TASK_TIMEOUT",
      "no load said: the timeout alone",
    );
    await one.run("echo", 1, { timeoutMs: 5000 });
    assert.equal(
      await code(one.run("staged", { loadMs: 400, runMs: 20 }, { timeoutMs: 150, loadTimeoutMs: 2000 })),
      "ok",
      "a worker that has answered before says it loads: the load bound",
    );
    // Cancelled while it loads: the load keeps the bound it had (1.15 s from its start), not a new one from the
    // cancel, and the worker is replaced when it passes it.
    const cancel = new AbortController();
    const hung = one.run(
      "staged",
      { loadMs: 5000, runMs: 20 },
      { timeoutMs: 150, loadTimeoutMs: 1000, signal: cancel.signal },
    );
    const t = performance.now();
    await new Promise((r) => setTimeout(r, 900));
    cancel.abort();
    assert.equal(await code(hung), "TASK_ABORTED");
    await waitUntil(() => one.stats().replaced === 2, 10_000, "the hung load's worker replaced");
    assert.ok(performance.now() - t < 1900, `replaced after ${Math.round(performance.now() - t)} ms`);
    await one.close(AbortSignal.timeout(5000));
  });

  it("a task stuck in native code cannot be terminated: its worker is abandoned and counted, a new one serves", async () => {
    const p = pool({ size: 1, terminateGraceMs: 200 });
    const stuck = p.run("native", { addon, seconds: 3 }, { timeoutMs: 300 });
    assert.equal(await code(stuck), "TASK_TIMEOUT");
    assert.deepEqual((await p.run("echo", "after", { timeoutMs: 5000 })).value, "after");
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(p.stats().abandoned, 1);
    await p.close(AbortSignal.timeout(5000));
  });

  it("a flood: QUEUE_FULL at once beyond the queue, every accepted task completes, memory stays bounded", async () => {
    const p = pool({ size: 2, maxQueue: 16 });
    const before = process.memoryUsage().heapUsed;
    const started = performance.now();
    const all = Array.from({ length: 5000 }, (_, i) =>
      code(p.run("sleep", 5, { timeoutMs: 10_000 })).then((c) => [i, c]),
    );
    // The refusals settle at once: they do not wait behind the queue.
    const refused = await Promise.race([
      Promise.all(all.slice(18)).then((r) => r.every(([, c]) => c === "QUEUE_FULL")),
      new Promise((r) => setTimeout(() => r("slow"), 1000)),
    ]);
    assert.equal(refused, true);
    assert.ok(performance.now() - started < 1000);
    const codes = await Promise.all(all);
    assert.deepEqual(
      codes.slice(0, 18).map(([, c]) => c),
      Array(18).fill("ok"),
    );
    assert.ok(process.memoryUsage().heapUsed - before < 64 * 1024 * 1024);
    await p.close(AbortSignal.timeout(5000));
  });

  it("cancellation through AbortSignal: queued and running tasks, the running one's worker replaced", async () => {
    const p = pool({ size: 1 });
    const running = new AbortController();
    const queued = new AbortController();
    const a = p.run("sleep", 10_000, { timeoutMs: 20_000, signal: running.signal });
    const b = p.run("sleep", 10_000, { timeoutMs: 20_000, signal: queued.signal });
    queued.abort();
    assert.equal(await code(b), "TASK_ABORTED");
    running.abort();
    assert.equal(await code(a), "TASK_ABORTED");
    assert.equal((await p.run("echo", 7, { timeoutMs: 5000 })).value, 7);
    assert.equal(await code(p.run("echo", 1, { timeoutMs: 5000, signal: AbortSignal.abort() })), "TASK_ABORTED");
    assert.equal(p.stats().replaced, 1);
    await p.close(AbortSignal.timeout(5000));
  });

  it("a running task cancelled that ends within cancelGraceMs keeps its worker (its runtime and model stay loaded)", async () => {
    // A check group cancels its other checks when one fails: with workers replaced on every cancel, each failed
    // part on a line cost a reload of the runtime and the model (seen in the checks integration test).
    const p = pool({ size: 1, cancelGraceMs: 5000 });
    const first = (await p.run("thread", null, { timeoutMs: 5000 })).value;
    for (let round = 0; round < 3; round++) {
      const cancel = new AbortController();
      const running = p.run("sleep", 100, { timeoutMs: 5000, signal: cancel.signal });
      const next = p.run("thread", null, { timeoutMs: 5000 });
      await new Promise((r) => setTimeout(r, 20));
      cancel.abort();
      // The caller hears at once; the worker finishes the run, its result dropped, and takes the next task.
      assert.equal(await code(running), "TASK_ABORTED");
      assert.equal((await next).value, first, `round ${round}: the same worker`);
    }
    assert.deepEqual([p.stats().replaced, p.stats().completed, p.stats().failed], [0, 4, 0]);
    // One that does not end within the grace is replaced, as before, and the next task gets a new worker.
    const short = pool({ size: 1, cancelGraceMs: 200 });
    const before = (await short.run("thread", null, { timeoutMs: 5000 })).value;
    const cancel = new AbortController();
    const looping = short.run("loop", null, { timeoutMs: 60_000, signal: cancel.signal });
    await new Promise((r) => setTimeout(r, 20));
    cancel.abort();
    assert.equal(await code(looping), "TASK_ABORTED");
    assert.notEqual((await short.run("thread", null, { timeoutMs: 5000 })).value, before);
    assert.deepEqual([short.stats().replaced, short.stats().failed], [1, 0]);
    // Cancelled while its worker still loads (600 ms, past the 200 ms grace): the load finishes, since a new
    // worker would only start it over, then the run gets its grace; the same worker takes the next task.
    const loader = (await short.run("thread", null, { timeoutMs: 5000 })).value;
    const loadingCancel = new AbortController();
    const loading = short.run(
      "staged",
      { loadMs: 600, runMs: 20 },
      { timeoutMs: 5000, loadTimeoutMs: 5000, signal: loadingCancel.signal },
    );
    const afterLoad = short.run("thread", null, { timeoutMs: 5000 });
    await new Promise((r) => setTimeout(r, 50));
    loadingCancel.abort();
    assert.equal(await code(loading), "TASK_ABORTED");
    assert.equal((await afterLoad).value, loader);
    assert.equal(short.stats().replaced, 1);
    await p.close(AbortSignal.timeout(5000));
    await short.close(AbortSignal.timeout(5000));
  });

  it("a type that fails N times in a row opens its breaker; a probe after openMs closes it, or opens it again", async () => {
    let now = 0;
    const p = pool({ breaker: { failures: 3, openMs: 1000 }, now: () => now });
    for (let i = 0; i < 3; i++) assert.equal(await code(p.run("throws", null, { timeoutMs: 5000 })), "TASK_FAILED");
    assert.equal(await code(p.run("throws", null, { timeoutMs: 5000 })), "CIRCUIT_OPEN");
    assert.deepEqual(p.stats().breakers, { throws: "open" });
    // Other types are not affected.
    assert.equal((await p.run("echo", 1, { timeoutMs: 5000 })).value, 1);
    now = 1000;
    // Half-open: one probe; it fails, so the breaker opens again.
    assert.equal(await code(p.run("throws", null, { timeoutMs: 5000 })), "TASK_FAILED");
    assert.equal(await code(p.run("throws", null, { timeoutMs: 5000 })), "CIRCUIT_OPEN");
    now = 2000;
    // While a probe runs, others of its type are refused.
    const probe = code(p.run("throws", null, { timeoutMs: 5000 }));
    assert.equal(await code(p.run("throws", null, { timeoutMs: 5000 })), "CIRCUIT_OPEN");
    assert.equal(await probe, "TASK_FAILED");
    // A probe that succeeds closes the breaker.
    now = 3000;
    const sleeper = pool({ breaker: { failures: 1, openMs: 1000 }, now: () => now });
    assert.equal(await code(sleeper.run("sleep", 50, { timeoutMs: 1 })), "TASK_TIMEOUT");
    assert.equal(await code(sleeper.run("sleep", 1, { timeoutMs: 5000 })), "CIRCUIT_OPEN");
    now = 4000;
    assert.equal((await sleeper.run("sleep", 1, { timeoutMs: 5000 })).value, 1);
    assert.deepEqual(sleeper.stats().breakers, { sleep: "closed" });
    await p.close(AbortSignal.timeout(5000));
    await sleeper.close(AbortSignal.timeout(5000));
  });

  it("a probe that ends without a verdict (cancelled) lets the next task probe: the breaker never sticks open", async () => {
    let now = 0;
    const p = pool({ breaker: { failures: 1, openMs: 1000 }, now: () => now });
    for (let round = 0; round < 3; round++) {
      assert.equal(await code(p.run("sleep", 50, { timeoutMs: 1 })), "TASK_TIMEOUT");
      assert.equal(await code(p.run("sleep", 1, { timeoutMs: 5000 })), "CIRCUIT_OPEN");
      now += 1000;
      const cancel = new AbortController();
      const probe = code(p.run("sleep", 1000, { timeoutMs: 5000, signal: cancel.signal }));
      cancel.abort();
      assert.equal(await probe, "TASK_ABORTED");
      assert.equal((await p.run("sleep", 1, { timeoutMs: 5000 })).value, 1, `round ${round}: the next task probes`);
      assert.deepEqual(p.stats().breakers, { sleep: "closed" });
    }
    await p.close(AbortSignal.timeout(5000));
  });

  it("a worker idle for idleReleaseMs is released (its thread ends); a running task never is; the next task starts one", async () => {
    const p = pool({ idleReleaseMs: 1000 });
    try {
      // Longer than the idle time: a busy worker is not idle.
      assert.equal((await p.run("sleep", 1500, { timeoutMs: 10_000 })).value, 1500);
      // Threads of earlier tests (one abandoned in native code) may still end meanwhile: fewer, not equal.
      const withWorker = workerThreads();
      assert.equal(p.stats().released, 0, "not released while it ran");
      await waitUntil(() => p.stats().workers === 0, 10_000, "the idle worker released");
      assert.equal(p.stats().released, 1);
      await waitUntil(() => workerThreads() < withWorker, 10_000, "its thread ended");
      // Work that keeps coming keeps the worker: each task is sooner than the idle time.
      const first = await p.run("thread", null, { timeoutMs: 10_000 });
      for (let i = 0; i < 5; i++) {
        await new Promise((r) => setTimeout(r, 100));
        assert.equal((await p.run("thread", null, { timeoutMs: 10_000 })).value, first.value, "the same worker");
      }
      assert.equal(p.stats().released, 1);
      await waitUntil(() => p.stats().released === 2 && p.stats().workers === 0, 10_000, "released again");
      // A profile of an idle worker, longer than the idle time: the worker stays for it, and goes after.
      await p.run("echo", 1, { timeoutMs: 10_000 });
      assert.equal(await p.profile(1, "cpu", 1500), "profiled");
      assert.equal(p.stats().released, 2, "not released while profiled");
      await waitUntil(() => p.stats().released === 3 && p.stats().workers === 0, 10_000, "released after it");
    } finally {
      await p.close(AbortSignal.timeout(5000));
    }
  });

  it("prefetch: a busy worker is sent its next task ahead; it counts as queued and its time starts when it starts", async () => {
    const p = pool({ size: 1, maxQueue: 2, prefetch: 1 });
    try {
      const first = (await p.run("thread", null, { timeoutMs: 5000 })).value;
      const order: string[] = [];
      const times: Record<string, { queueMs: number; runMs: number }> = {};
      const track = (name: string, task: Promise<{ value: unknown; queueMs: number; runMs: number }>) =>
        task.then((r) => {
          order.push(name);
          times[name] = { queueMs: r.queueMs, runMs: r.runMs };
          return r.value;
        });
      const a = track("a", p.run("held", 600, { timeoutMs: 5000 }));
      // Its own 300 ms start when it does: sent ahead at once, it waits 600 ms behind `a` in the worker.
      const b = track("b", p.run("sleep", 50, { timeoutMs: 300 }));
      const c = track("c", p.run("thread", null, { timeoutMs: 5000 }));
      assert.deepEqual([p.stats().busy, p.stats().queued], [1, 2], "b (sent ahead) and c (in the queue) wait");
      assert.equal(await code(p.run("echo", 1, { timeoutMs: 5000 })), "QUEUE_FULL", "b counts against maxQueue");
      assert.deepEqual(await Promise.all([a, b, c]), [1, 50, first], "b reached the worker while a ran");
      assert.deepEqual(order, ["a", "b", "c"]);
      // Each task's times are its own: `a` ran 600 ms; `b` waited behind it, then ran 50.
      assert.ok((times.a?.runMs ?? 0) >= 550 && (times.a?.queueMs ?? 1e9) < 300, JSON.stringify(times.a));
      assert.ok((times.b?.queueMs ?? 0) >= 550 && (times.b?.runMs ?? 1e9) < 300, JSON.stringify(times.b));
      assert.deepEqual([p.stats().workers, p.stats().replaced], [1, 0]);
    } finally {
      await p.close(AbortSignal.timeout(5000));
    }
  });

  it("prefetch: a task sent ahead and cancelled never runs and its worker stays; one whose worker fails runs on the next", async () => {
    const p = pool({ size: 1, prefetch: 1 });
    try {
      const first = (await p.run("thread", null, { timeoutMs: 5000 })).value;
      for (let round = 0; round < 3; round++) {
        const before = (await p.run("started", null, { timeoutMs: 5000 })).value as number;
        const running = p.run("held", 300, { timeoutMs: 5000 });
        const cancel = new AbortController();
        const ahead = p.run("sleep", 5000, { timeoutMs: 60_000, signal: cancel.signal });
        cancel.abort();
        assert.equal(await code(ahead), "TASK_ABORTED", "the caller hears at once");
        assert.equal((await running).value, 1, "the cancelled task had been sent ahead");
        // `started` itself is the one more: the cancelled task was skipped, not run.
        assert.equal((await p.run("started", null, { timeoutMs: 5000 })).value, before + 2);
        assert.equal((await p.run("thread", null, { timeoutMs: 5000 })).value, first, "the same worker");
      }
      assert.deepEqual([p.stats().replaced, p.stats().failed], [0, 0]);
      // The worker dies or is replaced under its task: the one sent ahead never started and is not its fault.
      for (const [type, timeoutMs, expected] of [
        ["exit", 5000, "TASK_EXITED"],
        ["crash", 5000, "TASK_CRASHED"],
        ["loop", 300, "TASK_TIMEOUT"],
      ] as const) {
        const failingWorker = (await p.run("thread", null, { timeoutMs: 5000 })).value;
        const failing = code(p.run(type, null, { timeoutMs }));
        const ahead = p.run("thread", null, { timeoutMs: 5000 });
        assert.equal(await failing, expected);
        assert.notEqual((await ahead).value, failingWorker, `${type}: the task sent ahead ran on the new worker`);
      }
      assert.deepEqual([p.stats().replaced, p.stats().failed], [3, 3]);
      // A crash right after the worker answered the task before: that answer counts, the crash is the next
      // task's. (A worker's uncaught error can reach the pool before messages it posted earlier.)
      for (let round = 0; round < 30; round++) {
        await p.run("echo", round, { timeoutMs: 5000 }); // a new worker is sent nothing ahead before it answers
        const [answered, crashed] = await Promise.all([
          code(p.run("echo", round, { timeoutMs: 5000 })),
          code(p.run("crashNow", null, { timeoutMs: 5000 })),
        ]);
        assert.deepEqual([answered, crashed], ["ok", "TASK_CRASHED"], `round ${round}`);
      }
      assert.deepEqual([p.stats().replaced, p.stats().failed], [33, 33], "one worker per crash");

      // Closing with a task sent ahead: it fails with POOL_CLOSED, as a queued one does.
      const hung = code(p.run("loop", null, { timeoutMs: 60_000 }));
      const ahead = code(p.run("echo", 1, { timeoutMs: 60_000 }));
      await p.close(AbortSignal.timeout(300));
      assert.deepEqual([await hung, await ahead], ["POOL_CLOSED", "POOL_CLOSED"]);
    } finally {
      await p.close(AbortSignal.timeout(5000));
    }
  });

  it("prefetch: a task sent ahead, cancelled after its worker started loading for it, keeps the load's bound", async () => {
    const p = pool({ size: 1, prefetch: 1, cancelGraceMs: 200 });
    try {
      let late = 0;
      for (let round = 0; round < 3; round++) {
        const worker = (await p.run("thread", null, { timeoutMs: 5000 })).value;
        const before = (await p.run("started", null, { timeoutMs: 5000 })).value as number;
        const first = code(p.run("sleep", 20, { timeoutMs: 5000 }));
        const cancel = new AbortController();
        const loading = code(
          p.run("staged", { loadMs: 600, runMs: 10 }, { timeoutMs: 5000, loadTimeoutMs: 5000, signal: cancel.signal }),
        );
        // The main thread busy: the worker answers `first` and starts loading for the next before the pool
        // hears, so the cancel reaches a task already started.
        const until = performance.now() + 500;
        while (performance.now() < until);
        cancel.abort();
        assert.deepEqual([await first, await loading], ["ok", "TASK_ABORTED"]);
        // Past the load (600 ms) and the grace (200): the worker finished the load, then the run, and stays.
        assert.equal((await p.run("thread", null, { timeoutMs: 5000 })).value, worker, `round ${round}`);
        // `sleep`, `thread` and this one, and `staged` if the cancel came too late to skip it.
        const after = (await p.run("started", null, { timeoutMs: 5000 })).value as number;
        if (after - before === 4) late += 1;
      }
      assert.equal(p.stats().replaced, 0);
      // A machine too slow for the worker to start it within 500 ms would skip it every round instead.
      assert.ok(late >= 1, "the cancel reached a task already started at least once");
    } finally {
      await p.close(AbortSignal.timeout(5000));
    }
  });

  it("a worker whose error came before the answer it posted first is given no task after that answer", async () => {
    // Node delivers a worker's uncaught error on its internal port, which can overtake the answers it posted
    // before. Holding the main thread in the worker's 'online' event (an internal message too) lets the worker
    // answer and crash meanwhile, and makes the error come first: the only way to force this order from outside.
    for (let round = 0; round < 5; round++) {
      const p = pool({ size: 1, prefetch: 1 });
      try {
        const answered = code(p.run("answerThenCrash", round, { timeoutMs: 5000 }));
        const queued = code(p.run("echo", round, { timeoutMs: 5000 }));
        const slots = (p as unknown as { slots: Set<{ worker: Worker }> }).slots;
        for (const { worker } of slots) {
          worker.once("online", () => {
            const until = performance.now() + 300;
            while (performance.now() < until);
          });
        }
        assert.deepEqual([await answered, await queued], ["ok", "ok"], `round ${round}`);
      } finally {
        await p.close(AbortSignal.timeout(5000));
      }
    }
  });

  it("close: takes nothing new, lets work finish within the deadline, then fails the rest with POOL_CLOSED", async () => {
    const p = pool({ size: 1 });
    const quick = p.run("sleep", 100, { timeoutMs: 5000 });
    const queued = p.run("sleep", 100, { timeoutMs: 5000 });
    const closing = p.close(AbortSignal.timeout(5000));
    assert.equal(await code(p.run("echo", 1, { timeoutMs: 5000 })), "POOL_CLOSED");
    await closing;
    assert.deepEqual([await code(quick), await code(queued)], ["ok", "ok"]);

    const q = pool({ size: 1 });
    const hung = code(q.run("loop", null, { timeoutMs: 60_000 }));
    const waiting = code(q.run("echo", 1, { timeoutMs: 60_000 }));
    const t = performance.now();
    await q.close(AbortSignal.timeout(300));
    assert.ok(performance.now() - t < 3000, "the deadline bounds the drain");
    assert.deepEqual([await hung, await waiting], ["POOL_CLOSED", "POOL_CLOSED"]);
    assert.equal(q.stats().workers, 0);
  });
});
