import { Histogram, type Registry } from "prom-client";
import { type Series, scrapedFamily } from "../kernel/scraped.ts";
import type { TaskResult } from "./runner.ts";

export interface TaskFigures {
  /** Results by task: ok and failed, and of the ok ones, pass and fail verdicts. */
  counts(): ReadonlyMap<string, { ok: number; failed: number; pass: number; fail: number }>;
  /** The pool's figures; undefined until the first task started it. */
  pool():
    | { workers: number; busy: number; queued: number; replaced: number; abandoned: number; refused: number }
    | undefined;
}

/**
 * The tasks module's families in /metrics: results by outcome, run time, the pool's workers and queue. A pool
 * not started has no series (absent, not zero). Returns what to call with each result.
 */
export function registerTaskMetrics(registry: Registry, f: TaskFigures): (result: TaskResult) => void {
  scrapedFamily({
    registry,
    type: "counter",
    name: "outpost_task_results_total",
    help: "Task results since start, by task and outcome (pass, fail: a verdict; done: no verdict; error)",
    labels: ["task", "outcome"],
    read: () =>
      [...f.counts()].flatMap(
        ([task, c]): Series => [
          [{ task, outcome: "pass" }, c.pass],
          [{ task, outcome: "fail" }, c.fail],
          [{ task, outcome: "done" }, c.ok - c.pass - c.fail],
          [{ task, outcome: "error" }, c.failed],
        ],
      ),
  });
  const pool = (pick: (p: NonNullable<ReturnType<TaskFigures["pool"]>>) => number) => (): Series => {
    const p = f.pool();
    return p ? [[{}, pick(p)]] : [];
  };
  const gauge = (name: string, help: string, read: () => Series) =>
    scrapedFamily({ registry, type: "gauge", name, help, labels: [], read });
  const counter = (name: string, help: string, read: () => Series) =>
    scrapedFamily({ registry, type: "counter", name, help, labels: [], read });
  gauge(
    "outpost_task_workers",
    "Worker threads alive",
    pool((p) => p.workers),
  );
  gauge(
    "outpost_task_workers_busy",
    "Worker threads running a task",
    pool((p) => p.busy),
  );
  gauge(
    "outpost_task_queue_depth",
    "Tasks waiting for a worker",
    pool((p) => p.queued),
  );
  counter(
    "outpost_task_workers_replaced_total",
    "Workers replaced after a crash, a timeout or a cancel",
    pool((p) => p.replaced),
  );
  counter(
    "outpost_task_workers_abandoned_total",
    "Workers that did not end when terminated (stuck in native code)",
    pool((p) => p.abandoned),
  );
  counter(
    "outpost_task_refused_total",
    "Tasks refused at once (queue full, breaker open, closing)",
    pool((p) => p.refused),
  );
  const runs = new Histogram({
    name: "outpost_task_run_seconds",
    help: "Time a task spent in its worker",
    labelNames: ["task"],
    buckets: [0.0005, 0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10],
    registers: [registry],
  });
  return (result) => {
    if (typeof result.runMs === "number") runs.observe({ task: result.task }, result.runMs / 1000);
  };
}
