// npm run bench -- --only tasks: issue 11's figures, side by side in one run. In-process with the real worker
// (dispatch, throughput, latency under load, native vs wasm), and the built binary (cold start, RSS, size).
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { pino } from "pino";
import { WorkerPool } from "../src/tasks/pool.ts";
import { chooseRuntime, workerSource } from "../src/tasks/runtime.ts";
import type { Tensor } from "../src/tasks/tensors.ts";
import { AgentProcess, ROOT } from "../test/helpers/agent-process.ts";
import { operatorKey } from "../test/helpers/commands.ts";
import { processMemory } from "../test/helpers/memory.ts";
import type { Mosquitto } from "../test/helpers/mosquitto.ts";
import type { Watch } from "../test/helpers/mqtt-watch.ts";
import { Operator, PREFIX } from "../test/helpers/operator.ts";
import { demoTasks, MODEL } from "../test/helpers/parts-model.ts";
import type { BenchRow } from "./bench-board.ts";

/** A heavier third-party model (scripts/export-mobilenet.py); its rows are skipped when it is not there. */
const HEAVY = join(ROOT, ".cache", "models", "mobilenet_v2.onnx");
/** Binary sizes before the tasks module (docs/benchmarks.md, issue 12). */
const BEFORE = { "linux-x64": 106.6, "linux-arm64": 101.3 };

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((s.length * p) / 100))] ?? 0;
};

function tensor(dims: number[]): Tensor {
  const n = dims.reduce((a, b) => a * b, 1);
  return { type: "float32", dims, data: new Float32Array(n).map((_, i) => (i % 251) / 251) };
}

const SHIPPED = { path: MODEL, dims: [1, 1, 64, 64], name: "shipped CNN (64x64)" };
const MOBILENET = { path: HEAVY, dims: [1, 3, 224, 224], name: "MobileNetV2 (224x224)" };

async function pool(size: number, runtime: "native" | "wasm"): Promise<WorkerPool> {
  const choice = await chooseRuntime(runtime, join(tmpdir(), "outpost-bench-runtime"));
  return new WorkerPool({
    source: workerSource(),
    workerData: { intraOpThreads: 1, ...choice.setup },
    size,
    maxQueue: 1000,
    breaker: { failures: 1000, openMs: 1000 },
    // As the agent's runner: a busy worker is sent its next task ahead.
    prefetch: 1,
    logger: pino({ level: "silent" }),
  });
}

/** Inputs made once per model: building a 150k-element tensor per task would load the main thread instead. */
const inputs = new Map<string, { image: Tensor }>();
const infer = (p: WorkerPool, model: { path: string; dims: number[] }) => {
  let feeds = inputs.get(model.path);
  if (!feeds) {
    feeds = { image: tensor(model.dims) };
    inputs.set(model.path, feeds);
  }
  return p.run("bench", { op: "infer", model: { path: model.path }, feeds }, { timeoutMs: 60_000 });
};

/** Round trips one after another: p50 of the whole call and of the runtime's run() inside the worker. */
async function sequential(p: WorkerPool, model: typeof SHIPPED, n: number) {
  for (let i = 0; i < Math.min(50, n); i++) await infer(p, model);
  const total: number[] = [];
  const inside: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    const r = await infer(p, model);
    total.push(performance.now() - t);
    inside.push((r.value as { inferMs: number }).inferMs);
  }
  return { p50: pct(total, 50), p99: pct(total, 99), inside: pct(inside, 50) };
}

/** Tasks per second with `size` workers kept busy (two tasks in hand per worker) for `seconds`. */
async function throughput(size: number, model: typeof SHIPPED, seconds: number): Promise<number> {
  const p = await pool(size, "native");
  try {
    await Promise.all(Array.from({ length: size * 2 }, () => infer(p, model)));
    let done = 0;
    const end = performance.now() + seconds * 1000;
    await Promise.all(
      Array.from({ length: size * 2 }, async () => {
        while (performance.now() < end) {
          await infer(p, model);
          done += 1;
        }
      }),
    );
    return done / seconds;
  } finally {
    await p.close(AbortSignal.timeout(5000));
  }
}

/** Open-loop arrivals at `rate` per second for `seconds`: latency percentiles of what a producer sees. */
async function underLoad(size: number, model: typeof SHIPPED, rate: number, seconds: number) {
  const p = await pool(size, "native");
  try {
    await Promise.all(Array.from({ length: size * 2 }, () => infer(p, model)));
    const latencies: number[] = [];
    const started = performance.now();
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < rate * seconds; i++) {
      const due = started + (i * 1000) / rate;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      const t = performance.now();
      jobs.push(infer(p, model).then(() => void latencies.push(performance.now() - t)));
    }
    await Promise.all(jobs);
    return { p50: pct(latencies, 50), p99: pct(latencies, 99) };
  } finally {
    await p.close(AbortSignal.timeout(5000));
  }
}

/** The same model in the main thread: what the pool's dispatch is measured against. */
async function mainThread(model: typeof SHIPPED, n: number): Promise<number> {
  const session = await ort.InferenceSession.create(model.path, {
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    executionMode: "sequential",
    extra: { session: { intra_op: { allow_spinning: "0" } } },
  });
  const t0 = tensor(model.dims);
  const feeds = { image: new ort.Tensor("float32", t0.data as Float32Array, t0.dims) };
  for (let i = 0; i < 50; i++) await session.run(feeds);
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await session.run(feeds);
    times.push(performance.now() - t);
  }
  await session.release();
  return pct(times, 50);
}

async function inProcess(rows: BenchRow[]): Promise<void> {
  const heavy = existsSync(HEAVY);
  const models = heavy ? [SHIPPED, MOBILENET] : [SHIPPED];
  const one = await pool(1, "native");
  const shipped = await sequential(one, SHIPPED, 2000);
  await one.close(AbortSignal.timeout(5000));
  const direct = await mainThread(SHIPPED, 2000);
  rows.push({
    metric: "task round trip, shipped model, p50 (pool) vs the model in the main thread",
    outpost: shipped.p50 * 1000,
    bare: direct * 1000,
    unit: "µs",
    note: `dispatch overhead ${((shipped.p50 - shipped.inside) * 1000).toFixed(0)} µs (round trip minus run() inside the worker; target <= 100)`,
  });
  for (const model of models) {
    const n = model === SHIPPED ? 1000 : 60;
    const native = await pool(1, "native");
    const a = await sequential(native, model, n);
    await native.close(AbortSignal.timeout(5000));
    const wasm = await pool(1, "wasm");
    const b = await sequential(wasm, model, n);
    await wasm.close(AbortSignal.timeout(5000));
    rows.push({
      metric: `inference p50, ${model.name}: native vs wasm`,
      outpost: a.p50,
      bare: b.p50,
      unit: "ms",
      note: `bare = onnxruntime-web (wasm); p99 ${a.p99.toFixed(2)} vs ${b.p99.toFixed(2)} ms; one worker, one thread`,
    });
  }
  const model = heavy ? MOBILENET : SHIPPED;
  const t1 = await throughput(1, model, 5);
  const t2 = await throughput(2, model, 5);
  rows.push({
    metric: `throughput, ${model.name}, 2 workers vs 1`,
    outpost: t2,
    bare: t1,
    unit: "tasks/s",
    note: `${(t2 / t1).toFixed(2)}x (target >= 1.7x); 2 cores`,
  });
  const load = await underLoad(2, model, Math.max(1, Math.round(t2 * 0.8)), 5);
  rows.push({
    metric: `latency at 80% of capacity (${Math.round(t2 * 0.8)}/s), ${model.name}, 2 workers: p50`,
    outpost: load.p50,
    unit: "ms",
    note: `p99 ${load.p99.toFixed(2)} ms; open-loop arrivals`,
  });
}

async function binary(rows: BenchRow[], o: { bin: string; broker: Mosquitto; watch: Watch }): Promise<void> {
  const ops = operatorKey();
  const operator = await Operator.open(o.broker.port, ops);
  const home = mkdtempSync(join(tmpdir(), "outpost-bench-tasks-"));
  const heavy = existsSync(HEAVY);
  const start = (id: string, runtime: string, workers = 1, idleRelease = "5m") =>
    AgentProcess.run([o.bin], {
      device: { id },
      mqtt: { url: o.broker.url },
      commands: { trustedKeys: [{ name: "ops", key: ops.publicText, allow: ["*"] }] },
      tasks: {
        workers,
        runtime,
        idleRelease,
        runtimeDir: join(home, "runtime"),
        define: { ...demoTasks(), ...(heavy ? { heavy: { type: "onnx", model: HEAVY } } : {}) },
      },
    });
  const online = (id: string) =>
    o.watch.waitForNext((m) => m.topic === `${PREFIX}/${id}/status` && m.json.state === "online", 30_000, "online");
  const image = { image: readFileSync(join(ROOT, "src", "tasks", "demo", "samples", "good-1.png")).toString("base64") };
  const run = (id: string, task = "inspect", input: unknown = image) =>
    operator.call(id, "task.run", { task, input }, { timeoutMs: 60_000 });
  try {
    // Cold start: the process started, online, the first task's reply (runtime extracted or not, wasm compiled).
    for (const [label, runtime] of [
      ["first start, native (extracts the runtime)", "native"],
      ["later start, native", "native"],
      ["wasm", "wasm"],
    ] as const) {
      const id = `bench-cold-${runtime}`;
      const t = performance.now();
      const agent = start(id, runtime);
      await online(id);
      const reply = await run(id);
      const ms = performance.now() - t;
      // What the start left behind: extracting the runtime whole in memory once cost +100 MiB for the whole run.
      const memory = processMemory(agent.child.pid ?? 0);
      await agent.cleanup();
      if (reply.finals[0]?.state !== "succeeded")
        throw new Error(`cold start ${label}: ${JSON.stringify(reply.finals[0])}`);
      rows.push({
        metric: `cold start to first inference, ${label}`,
        outpost: ms,
        unit: "ms",
        note: `binary, x64; then RSS ${memory.rss.toFixed(1)} MiB, anonymous ${memory.anon.toFixed(1)}`,
      });
    }
    // RSS with 0, 1 and 2 workers holding the shipped model (native).
    const id = "bench-rss";
    const agent = start(id, "native", 2);
    await online(id);
    const settle = () => new Promise((r) => setTimeout(r, 1500));
    await settle();
    const none = processMemory(agent.child.pid ?? 0).rss;
    await run(id);
    await settle();
    const oneWorker = processMemory(agent.child.pid ?? 0).rss;
    await Promise.all([run(id), run(id), run(id), run(id)]);
    await settle();
    const twoWorkers = processMemory(agent.child.pid ?? 0).rss;
    await agent.cleanup();
    rows.push({
      metric: "RSS with 0 / 1 / 2 workers holding the shipped model",
      outpost: twoWorkers,
      unit: "MiB",
      note: `0 workers ${none.toFixed(1)}, 1 worker ${oneWorker.toFixed(1)}, 2 workers ${twoWorkers.toFixed(1)}; binary, native`,
    });
    // A worker released when idle (tasks.idleRelease): what the agent gives back, and what the next task pays.
    {
      const id = "bench-release";
      const agent = start(id, "native", 1, "3s");
      await online(id);
      await settle();
      const pid = agent.child.pid ?? 0;
      const idle = processMemory(pid);
      await run(id);
      await settle();
      const holding = processMemory(pid);
      const released = async () => {
        const list = await operator.call(id, "task.list", undefined, { timeoutMs: 10_000 });
        return (list.finals[0]?.result as { pool?: { released?: number } } | undefined)?.pool?.released ?? 0;
      };
      // Three rounds of release and reload: the anonymous memory after each release says whether one leaks.
      const afterRelease: number[] = [];
      let after = holding;
      let again = holding;
      let reloadMs = 0;
      let warmMs = 0;
      for (let round = 1; round <= 3; round++) {
        const t0 = performance.now();
        while ((await released()) < round) {
          if (performance.now() - t0 > 30_000) throw new Error("the idle worker was not released");
          await new Promise((r) => setTimeout(r, 500));
        }
        await settle();
        after = processMemory(pid);
        afterRelease.push(after.anon);
        const t = performance.now();
        await run(id);
        reloadMs = Math.max(reloadMs, performance.now() - t);
        const t2 = performance.now();
        await run(id);
        warmMs = Math.max(warmMs, performance.now() - t2);
        await settle();
        again = processMemory(pid);
      }
      await agent.cleanup();
      rows.push({
        metric: "RSS / anonymous: idle, one worker holding the model, that worker released when idle",
        outpost: after.rss,
        bare: holding.rss,
        unit: "MiB",
        note: `idle ${idle.rss.toFixed(1)} / ${idle.anon.toFixed(1)}, holding ${holding.rss.toFixed(1)} / ${holding.anon.toFixed(1)}, released ${after.rss.toFixed(1)} / ${after.anon.toFixed(1)}, a worker again ${again.rss.toFixed(1)} / ${again.anon.toFixed(1)}; anonymous after each of 3 releases ${afterRelease.map((a) => a.toFixed(1)).join(", ")}; binary, native`,
      });
      rows.push({
        metric: "task.run round trip: the first after a release (a new worker loads) / the next, slowest of 3",
        outpost: reloadMs,
        bare: warmMs,
        unit: "ms",
        note: "binary, native, the shipped model",
      });
    }
    for (const [target, before] of Object.entries(BEFORE)) {
      const path = join(ROOT, "dist", `outpost-${target}`);
      if (!existsSync(path)) continue;
      const size = statSync(path).size / 1024 / 1024;
      rows.push({
        metric: `binary size ${target} with both runtimes and the decoders`,
        outpost: size,
        bare: before,
        unit: "MiB",
        note: `+${(size - before).toFixed(1)} MiB (target +${target === "linux-x64" ? 16 : 11})`,
      });
    }
  } finally {
    await operator.close();
    rmSync(home, { recursive: true, force: true });
  }
}

export async function taskRows(rows: BenchRow[], o: { bin: string; broker: Mosquitto; watch: Watch }): Promise<void> {
  await inProcess(rows);
  await binary(rows, o);
}
