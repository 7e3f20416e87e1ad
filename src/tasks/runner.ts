import { createHash, randomUUID } from "node:crypto";
import { join } from "node:path";
import { formatDuration } from "../config/duration.ts";
import type { Code } from "../core/codes.ts";
import { errorMessage, isOutpostError, OutpostError } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";
import type { ProfileKind } from "../core/profile.ts";
import type { OutboxMessage } from "../outbox/types.ts";
import { classification, runChecks } from "./checks.ts";
import type { ClassifyDefinition, TaskDefinition, TasksConfig } from "./config.ts";
import { WorkerPool } from "./pool.ts";
import { chooseRuntime, workerSource } from "./runtime.ts";
import { TaskModels } from "./task-models.ts";
import { fromWire, toWire, type WireTensor } from "./tensor-wire.ts";
import type { Tensor } from "./tensors.ts";
import type { InferOutput, ModelInfo, WorkerInput, WorkerSetup } from "./worker.ts";
import { defaultWorkers } from "./worker-count.ts";

/** What a task is given: tensors (onnx), or an image's bytes (classify-image, checks). */
export type TaskInput = { feeds: Record<string, WireTensor> } | { image: Uint8Array; file?: string };

export interface RunRequest {
  /** Ties the result, its message and every log line together: the command's request id, or a new one. */
  trace?: string;
  signal?: AbortSignal;
  /** Where the input came from, for the result (`command`, `watch`, `schedule`). */
  source: string;
}

/** What every step of one task run carries: its cancellation and its trace id (for the pool's log lines). */
interface Call {
  trace: string;
  signal?: AbortSignal;
}

/** A task's outcome, as published on `P/D/results/<task>` and returned to `task.run`. */
export type TaskResult = Record<string, unknown> & {
  task: string;
  trace: string;
  ok: boolean;
  /** Why a task could not run: a code of the registry (the pool admits only registered worker codes). */
  error?: { code: Code; message: string };
};

export interface RunnerOptions {
  config: TasksConfig;
  stateDir: string;
  logger: Logger;
  send(message: OutboxMessage & { topic: string }): void;
  resultTopic(task: string): string;
  /** Hears every result (published or not): the module's metrics. */
  onResult?(result: TaskResult): void;
  /** The monotonic clock (ms): run times and the pool's breakers. */
  now(): number;
}

/** Codes by which a task was not run at all: refused, cancelled or without a runtime. Try again later. */
export const REFUSALS: ReadonlySet<string> = new Set([
  "QUEUE_FULL",
  "CIRCUIT_OPEN",
  "POOL_CLOSED",
  "TASK_ABORTED",
  "TASK_RUNTIME_UNAVAILABLE",
]);

/**
 * Runs the configured tasks in the worker pool and publishes every outcome through the outbox. The pool (and
 * the native runtime's extraction) is created on the first task, so an agent with no inference task starts no
 * worker and writes nothing.
 */
export class TaskRunner {
  private readonly o: RunnerOptions;
  private pool: Promise<WorkerPool> | undefined;
  private poolReady: WorkerPool | undefined;
  private runtimeNote = "not loaded yet (loaded on the first task)";
  private runtimeKind: "native" | "wasm" | undefined;
  private closed = false;
  /** The pool's size when tasks.workers is not set: from cores and memory, worked out once. */
  private readonly defaultCount = defaultWorkers();
  /** What each model file in use declared when a worker loaded it (inputs, outputs, sha256). */
  private readonly loaded = new Map<string, ModelInfo>();
  private readonly counts = new Map<string, { ok: number; failed: number; pass: number; fail: number }>();

  constructor(options: RunnerOptions) {
    this.o = options;
    this.models = new TaskModels({
      stateDir: options.stateDir,
      config: options.config,
      logger: options.logger,
      definition: (task) => this.definition(task),
      evaluate: (task, input, request) => this.evaluate(task, input, request),
      describe: async (task, model, def) => {
        const pool = await this.getPool();
        await pool.run(
          task,
          { op: "describe", model: { path: model } },
          { timeoutMs: def.timeout, loadTimeoutMs: this.o.config.loadTimeout },
        );
      },
      retain: (control) => this.poolReady?.broadcast(control),
    });
  }

  /** Which model file each task runs, and model updates (task-models.ts): the module's ModelHost. */
  readonly models: TaskModels;

  definition(name: string): TaskDefinition {
    const def = Object.hasOwn(this.o.config.define, name) ? this.o.config.define[name] : undefined;
    if (!def) throw new OutpostError("TASK_UNKNOWN", `no task ${JSON.stringify(name)} is configured`);
    return def;
  }

  /** Workers at most: tasks run at once. */
  size(): number {
    return this.workers();
  }

  private workers(): number {
    return this.o.config.workers ?? this.defaultCount.workers;
  }

  /** Why the pool has the size it has: the configuration, or the default's reason (in task.list). */
  private sizeReason(): string {
    return this.o.config.workers === null || this.o.config.workers === undefined
      ? this.defaultCount.why
      : "tasks.workers";
  }

  private getPool(): Promise<WorkerPool> {
    if (this.closed) return Promise.reject(new OutpostError("POOL_CLOSED", "the agent is stopping"));
    this.pool ??= (async () => {
      const dir = this.o.config.runtimeDir ?? join(this.o.stateDir, "runtime");
      const choice = await chooseRuntime(this.o.config.runtime, dir);
      this.runtimeKind = choice.setup.runtime;
      this.runtimeNote = choice.note;
      this.o.logger.info({ runtime: this.runtimeKind, note: this.runtimeNote }, "inference runtime ready");
      const setup: WorkerSetup = { intraOpThreads: 1, ...choice.setup };
      const pool = new WorkerPool({
        source: workerSource(),
        workerData: setup,
        size: this.workers(),
        maxQueue: this.o.config.queue,
        resourceLimits: { maxOldGenerationSizeMb: this.o.config.workerHeapMb },
        breaker: { failures: this.o.config.breaker.failures, openMs: this.o.config.breaker.open },
        idleReleaseMs: this.o.config.idleRelease,
        // worker.ts runs its tasks in order, so a busy worker can be handed its next one (pool-types.ts).
        prefetch: 1,
        logger: this.o.logger,
        now: this.o.now,
      });
      this.poolReady = pool;
      this.models.retain();
      return pool;
    })();
    // A runtime that cannot be extracted now may be later (the directory fixed): the next task tries again.
    this.pool.catch(() => {
      this.pool = undefined;
    });
    return this.pool;
  }

  /**
   * Runs a task, publishes its result (success or failure) and returns it. Throws only when nothing ran: an
   * unknown task, or a refusal (REFUSALS), which publishes nothing.
   */
  async run(name: string, input: TaskInput, request: RunRequest): Promise<TaskResult> {
    const result = await this.evaluate(name, input, request);
    this.publish(result);
    return result;
  }

  /** Publishes a result through the outbox (again, for a result stored before a crash: same body, same trace). */
  publish(result: TaskResult): void {
    this.o.send({ topic: this.o.resultTopic(result.task), priority: "result", body: result });
  }

  /** Runs a task and returns its result without publishing it. */
  async evaluate(name: string, input: TaskInput, request: RunRequest): Promise<TaskResult> {
    const trace = request.trace ?? randomUUID();
    const log = this.o.logger.child({ task: name, trace });
    const def = this.definition(name);
    const started = this.o.now();
    const facts = { source: request.source, ...inputFacts(input) };
    let result: TaskResult;
    try {
      const call = { trace, ...(request.signal ? { signal: request.signal } : {}) };
      result = { task: name, trace, ok: true, ...facts, ...(await this.execute(name, def, input, call, log)) };
    } catch (err) {
      // Nothing ran: the caller is told (and may try again); there is no outcome to publish.
      if (isOutpostError(err) && REFUSALS.has(err.code)) throw err;
      const code = isOutpostError(err) ? err.code : "TASK_FAILED";
      result = { task: name, trace, ok: false, ...facts, error: { code, message: errorMessage(err) } };
    }
    result.totalMs = round(this.o.now() - started);
    this.count(name, result);
    // A task that could not run (a missing model, a broken input) is worth a warning; a verdict is not.
    log[result.ok ? "info" : "warn"](
      { ok: result.ok, verdict: result.verdict, error: result.error, totalMs: result.totalMs },
      result.ok ? "task done" : "task failed",
    );
    return result;
  }

  private async execute(
    name: string,
    def: TaskDefinition,
    input: TaskInput,
    call: Call,
    log: Logger,
  ): Promise<Record<string, unknown>> {
    switch (def.type) {
      case "onnx": {
        if (!("feeds" in input)) throw new OutpostError("TASK_INPUT_INVALID", `${name} takes tensors (input.feeds)`);
        const feeds: Record<string, Tensor> = {};
        for (const [k, t] of Object.entries(input.feeds)) feeds[k] = fromWire(k, t);
        const model = this.models.modelOf(name, def, call.trace);
        const r = await this.infer(name, model, { op: "infer", model: { path: model }, feeds }, def, call);
        return {
          ...r.facts,
          outputs: Object.fromEntries(Object.entries(r.out.outputs).map(([k, t]) => [k, toWire(t)])),
        };
      }
      case "classify-image": {
        if (!("image" in input)) throw new OutpostError("TASK_INPUT_INVALID", `${name} takes an image (input.image)`);
        return this.classify(name, def, input.image, call);
      }
      case "checks": {
        if (!("image" in input)) throw new OutpostError("TASK_INPUT_INVALID", `${name} takes an image (input.image)`);
        return this.checks(def.checks, input.image, call, log);
      }
      case "threshold":
        throw new OutpostError("TASK_INPUT_INVALID", `${name} is a threshold rule over telemetry: it takes no input`);
    }
  }

  private async infer(
    name: string,
    modelPath: string,
    input: WorkerInput,
    def: { timeout: number },
    call: Call,
  ): Promise<{ out: InferOutput; facts: Record<string, unknown> }> {
    const pool = await this.getPool();
    const r = await pool.run(name, input, {
      timeoutMs: def.timeout,
      loadTimeoutMs: this.o.config.loadTimeout,
      ...call,
    });
    const out = r.value as InferOutput;
    this.loaded.set(modelPath, out.model);
    return {
      out,
      facts: {
        model: { path: modelPath, sha256: out.model.sha256 },
        runtime: this.runtimeKind,
        queueMs: round(r.queueMs),
        runMs: round(r.runMs),
        inferMs: round(out.inferMs),
      },
    };
  }

  private async classify(
    name: string,
    def: ClassifyDefinition,
    image: Uint8Array,
    call: Call,
  ): Promise<Record<string, unknown>> {
    const model = this.models.modelOf(name, def, call.trace);
    const r = await this.infer(
      name,
      model,
      { op: "classify", model: { path: model }, image, input: def.input },
      def,
      call,
    );
    return { ...r.facts, ...classification(def, r.out) };
  }

  /** Every check on the same image at once (checks.ts): each a classify task of its own. */
  private async checks(
    names: readonly string[],
    image: Uint8Array,
    call: Call,
    log: Logger,
  ): Promise<Record<string, unknown>> {
    const verdict = await runChecks(
      names,
      (check, signal) => {
        const def = this.definition(check);
        if (def.type !== "classify-image") throw new OutpostError("TASK_FAILED", `${check} is not a classify task`);
        return this.classify(check, def, image, { trace: call.trace, signal });
      },
      call.signal,
      log,
    );
    return { runtime: this.runtimeKind, ...verdict };
  }

  /** Results by task so far (for /metrics). */
  resultCounts(): ReadonlyMap<string, { ok: number; failed: number; pass: number; fail: number }> {
    return this.counts;
  }

  /** The pool's figures, once it exists. */
  poolStats() {
    return this.poolReady?.stats();
  }

  /** Profiles worker n (1: the first started) in its thread; none before a task has started one. */
  profileWorker(n: number, kind: ProfileKind, ms: number, signal?: AbortSignal): Promise<unknown> {
    if (!this.poolReady) return Promise.reject(new OutpostError("DIAG_NO_WORKER", "no task has run: no worker"));
    return this.poolReady.profile(n, kind, ms, signal);
  }

  private count(name: string, result: TaskResult): void {
    this.o.onResult?.(result);
    let c = this.counts.get(name);
    if (!c) {
      c = { ok: 0, failed: 0, pass: 0, fail: 0 };
      this.counts.set(name, c);
    }
    if (result.ok) c.ok += 1;
    else c.failed += 1;
    if (result.verdict === "pass") c.pass += 1;
    if (result.verdict === "fail") c.fail += 1;
  }

  /** For `task.list` and describe: each task, its runtime, model, counts, queue depth and breaker. */
  list(): Record<string, unknown> {
    const stats = this.poolReady?.stats();
    const breakers: Record<string, string> = stats?.breakers ?? {};
    return {
      runtime: { kind: this.runtimeKind ?? null, wanted: this.o.config.runtime, note: this.runtimeNote },
      pool: stats
        ? {
            started: true,
            size: this.workers(),
            sizeFrom: this.sizeReason(),
            idleRelease: this.idleRelease(),
            ...stats,
            breakers: undefined,
            states: undefined,
            // Inference sessions each live worker holds (one per model file in use; released after an update).
            sessions: stats.states.map((s) => (s as { sessions?: number } | undefined)?.sessions ?? 0),
            numbered:
              "workers are 1, 2, ... in the order they started, as sessions lists them (ctl profile --worker N)",
          }
        : { started: false, size: this.workers(), sizeFrom: this.sizeReason(), idleRelease: this.idleRelease() },
      tasks: Object.fromEntries(
        Object.entries(this.o.config.define).map(([name, def]) => [
          name,
          {
            type: def.type,
            ...("model" in def
              ? {
                  model: this.models.modelOf(name, def),
                  sha256: this.loaded.get(this.models.modelOf(name, def))?.sha256 ?? null,
                  ...(this.models.version(name) ? { version: this.models.version(name) } : {}),
                }
              : {}),
            ...("watch" in def && def.watch ? { watch: def.watch.dir } : {}),
            counts: this.counts.get(name) ?? { ok: 0, failed: 0, pass: 0, fail: 0 },
            breaker: breakers[name] ?? "closed",
          },
        ]),
      ),
    };
  }

  /** What `task.list` says of idle workers: `released` counts those let go. */
  private idleRelease(): string {
    const ms = this.o.config.idleRelease;
    return ms > 0 ? `a worker idle for ${formatDuration(ms)} is released; the next task starts one` : "never";
  }

  /** A worker abandoned in native code makes the module unhealthy (an update in trial then rolls back). */
  health(): { ok: boolean; reason?: string } {
    const abandoned = this.poolReady?.stats().abandoned ?? 0;
    if (abandoned > 0) return { ok: false, reason: `${abandoned} task worker(s) stuck in native code were abandoned` };
    return this.models.health();
  }

  /** Takes no new task; a pool still being made (the runtime extracting) is closed once it exists. */
  async close(signal: AbortSignal): Promise<void> {
    this.closed = true;
    const pool = await this.pool?.catch(() => undefined);
    if (pool) await pool.close(signal);
  }
}

function inputFacts(input: TaskInput): Record<string, unknown> {
  if (!("image" in input)) return {};
  const sha256 = createHash("sha256").update(input.image).digest("hex");
  return { input: { sha256, bytes: input.image.byteLength, ...(input.file ? { file: input.file } : {}) } };
}

const round = (ms: number) => Math.round(ms * 1000) / 1000;
