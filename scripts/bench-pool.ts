// npm run bench -- --only pool: the worker pool's dispatch overhead (issue 11's first figure; the pool is built,
// the tasks module that will use it is not yet).
import { pino } from "pino";
import { WorkerPool } from "../src/tasks/pool.ts";
import type { BenchRow } from "./bench-board.ts";

/**
 * Issue 11's first figure, for the pool alone: the round trip of a task that does nothing (dispatch, the
 * worker's reply, the promise), against calling the same function in the main thread. p50 over `n`.
 */
export async function poolRows(rows: BenchRow[], n = 5000): Promise<void> {
  const source = `
const { parentPort } = require("node:worker_threads");
parentPort.on("message", ({ id, input }) => parentPort.postMessage({ id, ok: true, value: input }));
`;
  const pool = new WorkerPool({
    source,
    size: 1,
    maxQueue: 16,
    breaker: { failures: 100, openMs: 1000 },
    logger: pino({ level: "silent" }),
  });
  const input = { values: Array.from({ length: 64 }, (_, i) => i) };
  for (let i = 0; i < 200; i++) await pool.run("echo", input, { timeoutMs: 5000 });
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await pool.run("echo", input, { timeoutMs: 5000 });
    times.push(performance.now() - t);
  }
  await pool.close(AbortSignal.timeout(5000));
  const direct: number[] = [];
  const echo = async (x: unknown) => x;
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await echo(structuredClone(input));
    direct.push(performance.now() - t);
  }
  const p50 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
  rows.push({
    metric: "worker pool round trip of an empty task, p50",
    outpost: p50(times) * 1000,
    bare: p50(direct) * 1000,
    unit: "µs",
    note: `${n} tasks one after another, 64 numbers in and out; bare = the same call in the main thread (with a structured clone)`,
  });
}
