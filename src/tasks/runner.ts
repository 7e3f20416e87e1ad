import { createHash, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { basename, join } from "node:path";
import { durationMs as durationOf } from "../config/duration.ts";
import type { Code } from "../core/codes.ts";
import { errorMessage, isOutpostError, OutpostError } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";
import type { OutboxMessage } from "../outbox/types.ts";
import type { ClassifyDefinition, TaskDefinition, TasksConfig } from "./config.ts";
import { ModelStore } from "./models.ts";
import { WorkerPool } from "./pool.ts";
import { chooseRuntime, workerSource } from "./runtime.ts";
import { fromWire, toWire, type WireTensor } from "./tensor-wire.ts";
import type { Tensor } from "./tensors.ts";
import type { InferOutput, ModelInfo, WorkerControl, WorkerInput, WorkerSetup } from "./worker.ts";

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
  private readonly models = new Map<string, ModelInfo>();
  private readonly counts = new Map<string, { ok: number; failed: number; pass: number; fail: number }>();
  private readonly store: ModelStore;
  /** Each golden sample's last verdict: undefined until it ran. */
  private readonly goldens = new Map<string, { ok: boolean; reason?: string }>();
  /** A model under test, by the trace of the one run that checks it: every other task keeps its model. */
  private readonly candidates = new Map<string, string>();

  constructor(options: RunnerOptions) {
    this.o = options;
    this.store = new ModelStore(options.stateDir, Object.keys(options.config.define));
  }

  /** The model file a task runs: a delivered one (model update), else the one its configuration names. */
  modelOf(name: string, def: { model: string }, trace?: string): string {
    return (trace === undefined ? undefined : this.candidates.get(trace)) ?? this.store.path(name) ?? def.model;
  }

  /** Where a task's model is now and its release version, for a model update. */
  currentModel(task: string): { path: string; version?: string } {
    const def = this.definition(task);
    if (!("model" in def)) throw new OutpostError("OTA_KIND_UNSUPPORTED", `${task} is a ${def.type} task: no model`);
    const version = this.store.version(task);
    return { path: this.modelOf(task, def), ...(version ? { version } : {}) };
  }

  /**
   * Tries a verified model file on a task: placed beside the others, checked (its golden sample, or at least
   * that it loads) while every other run keeps the current model, then kept (the task switches) or removed.
   */
  async installModel(
    task: string,
    file: string,
    release: { version: string; sha256: string },
  ): Promise<{ state: "committed" } | { state: "rolled-back"; reason: string }> {
    this.currentModel(task);
    const placed = this.store.place(task, file, release);
    const verdict = await this.checkModel(task, placed.path);
    if (!verdict.ok) {
      this.store.discard(task, placed);
      this.retainModels();
      this.o.logger.warn({ task, version: release.version, reason: verdict.reason }, "model update rolled back");
      return { state: "rolled-back", reason: verdict.reason ?? "the new model failed its check" };
    }
    this.store.keep(task, placed);
    this.retainModels();
    // The check was the golden sample on this very model: it holds for the task's health now.
    if (this.goldenTasks().includes(task)) this.goldens.set(task, verdict);
    this.o.logger.info({ task, version: release.version }, "model update committed");
    return { state: "committed" };
  }

  /** A candidate model checked with the task's golden sample when it has one, else by loading it. */
  private async checkModel(task: string, candidate: string): Promise<{ ok: boolean; reason?: string }> {
    const def = this.definition(task);
    if (def.type === "classify-image" && def.golden) return this.golden(task, candidate);
    if (!("model" in def)) return { ok: true };
    try {
      const pool = await this.getPool();
      await pool.run(
        task,
        { op: "describe", model: { path: candidate } },
        { timeoutMs: durationOf(def.timeout), loadTimeoutMs: durationOf(this.o.config.loadTimeout) },
      );
      return { ok: true };
    } catch (err) {
      return { ok: false, reason: `${isOutpostError(err) ? `${err.code}: ` : ""}${errorMessage(err)}` };
    }
  }

  /**
   * Runs a task's golden sample (never published), on its model or on a candidate. The verdict on its own
   * model is kept for the module's health; a candidate's is only returned.
   */
  async golden(task: string, candidate?: string): Promise<{ ok: boolean; reason?: string }> {
    const def = this.definition(task);
    if (def.type !== "classify-image" || !def.golden) return { ok: true };
    const g = def.golden;
    const trace = randomUUID();
    if (candidate) {
      this.candidates.set(trace, candidate);
      this.retainModels();
    }
    let verdict: { ok: boolean; reason?: string };
    try {
      const image = readFileSync(g.image);
      const r = await this.evaluate(task, { image, file: g.image }, { source: "golden", trace });
      verdict =
        r.ok && r.label === g.label
          ? { ok: true }
          : {
              ok: false,
              reason: r.ok
                ? `golden sample ${basename(g.image)}: expected ${g.label}, got ${String(r.label)} (${String(r.score)})`
                : `golden sample ${basename(g.image)}: ${JSON.stringify(r.error)}`,
            };
    } catch (err) {
      verdict = { ok: false, reason: `golden sample ${basename(g.image)}: ${errorMessage(err)}` };
    } finally {
      this.candidates.delete(trace);
    }
    if (!candidate) this.goldens.set(task, verdict);
    return verdict;
  }

  /**
   * Tells every worker which model files are still in use (each task's current model, and a candidate under
   * test): each releases its sessions of any other file once no task uses it.
   */
  private retainModels(): void {
    const keep = new Set<string>(this.candidates.values());
    for (const [name, def] of Object.entries(this.o.config.define))
      if ("model" in def) keep.add(this.modelOf(name, def));
    const control: WorkerControl = { retain: [...keep] };
    this.poolReady?.broadcast(control);
  }

  /** Tasks with a golden sample. */
  goldenTasks(): string[] {
    return Object.entries(this.o.config.define)
      .filter(([, def]) => def.type === "classify-image" && def.golden !== undefined)
      .map(([name]) => name);
  }

  private definition(name: string): TaskDefinition {
    const def = Object.hasOwn(this.o.config.define, name) ? this.o.config.define[name] : undefined;
    if (!def) throw new OutpostError("TASK_UNKNOWN", `no task ${JSON.stringify(name)} is configured`);
    return def;
  }

  /** Workers at most: tasks run at once. */
  size(): number {
    return this.workers();
  }

  private workers(): number {
    return this.o.config.workers ?? Math.max(1, availableParallelism() - 1);
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
        breaker: { failures: this.o.config.breaker.failures, openMs: durationOf(this.o.config.breaker.open) },
        logger: this.o.logger,
      });
      this.poolReady = pool;
      this.retainModels();
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
    const started = performance.now();
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
    result.totalMs = round(performance.now() - started);
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
        const model = this.modelOf(name, def, call.trace);
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
    def: { timeout: string },
    call: Call,
  ): Promise<{ out: InferOutput; facts: Record<string, unknown> }> {
    const pool = await this.getPool();
    const r = await pool.run(name, input, {
      timeoutMs: durationOf(def.timeout),
      loadTimeoutMs: durationOf(this.o.config.loadTimeout),
      ...call,
    });
    const out = r.value as InferOutput;
    this.models.set(modelPath, out.model);
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
    const model = this.modelOf(name, def, call.trace);
    const r = await this.infer(
      name,
      model,
      { op: "classify", model: { path: model }, image, input: def.input },
      def,
      call,
    );
    const output = def.output ?? r.out.model.outputs[0]?.name ?? "";
    const t = r.out.outputs[output];
    if (!t) throw new OutpostError("TASK_MODEL_INVALID", `the model has no output ${output}`);
    const values = Array.from(t.data as Float32Array);
    if (values.length !== def.labels.length) {
      throw new OutpostError(
        "TASK_MODEL_INVALID",
        `output ${output} has ${values.length} scores for ${def.labels.length} labels`,
      );
    }
    let top = 0;
    for (let i = 1; i < values.length; i++) if ((values[i] ?? 0) > (values[top] ?? 0)) top = i;
    const label = def.labels[top] ?? "";
    const score = values[top] ?? 0;
    const pass = def.pass.labels.includes(label) && score >= def.pass.minScore;
    return {
      ...r.facts,
      verdict: pass ? "pass" : "fail",
      label,
      score: round6(score),
      scores: Object.fromEntries(def.labels.map((l, i) => [l, round6(values[i] ?? 0)])),
    };
  }

  /**
   * Runs every check on the same image at once. The first to fail (a fail verdict or an error) aborts the
   * others through their AbortSignal, and the verdict names it; pass needs every check to pass.
   */
  private async checks(
    names: readonly string[],
    image: Uint8Array,
    call: Call,
    log: Logger,
  ): Promise<Record<string, unknown>> {
    const { signal } = call;
    const group = new AbortController();
    const onAbort = () => group.abort();
    signal?.addEventListener("abort", onAbort, { once: true });
    const outcomes: Record<string, unknown> = {};
    let failed: { check: string; reason: string } | undefined;
    try {
      await Promise.all(
        names.map(async (check) => {
          const def = this.definition(check) as ClassifyDefinition;
          try {
            const r = await this.classify(check, def, image, { trace: call.trace, signal: group.signal });
            outcomes[check] = { verdict: r.verdict, label: r.label, score: r.score, runMs: r.runMs };
            if (r.verdict === "fail" && !failed) {
              failed = { check, reason: `${String(r.label)} (${String(r.score)})` };
              group.abort();
            }
          } catch (err) {
            const code = isOutpostError(err) ? err.code : "TASK_FAILED";
            if (code === "TASK_ABORTED" && failed) {
              outcomes[check] = { cancelled: true };
              return;
            }
            outcomes[check] = { error: { code, message: errorMessage(err) } };
            if (!failed) {
              failed = { check, reason: code };
              group.abort();
            }
          }
        }),
      );
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
    if (failed) log.info({ failedCheck: failed.check }, "a check failed; the others were cancelled");
    return {
      runtime: this.runtimeKind,
      verdict: failed ? "fail" : "pass",
      ...(failed ? { failedCheck: failed.check, reason: failed.reason } : {}),
      checks: outcomes,
    };
  }

  /** Results by task so far (for /metrics). */
  resultCounts(): ReadonlyMap<string, { ok: number; failed: number; pass: number; fail: number }> {
    return this.counts;
  }

  /** The pool's figures, once it exists. */
  poolStats() {
    return this.poolReady?.stats();
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
            ...stats,
            breakers: undefined,
            states: undefined,
            // Inference sessions each live worker holds (one per model file in use; released after an update).
            sessions: stats.states.map((s) => (s as { sessions?: number } | undefined)?.sessions ?? 0),
          }
        : { started: false, size: this.workers() },
      tasks: Object.fromEntries(
        Object.entries(this.o.config.define).map(([name, def]) => [
          name,
          {
            type: def.type,
            ...("model" in def
              ? {
                  model: this.modelOf(name, def),
                  sha256: this.models.get(this.modelOf(name, def))?.sha256 ?? null,
                  ...(this.store.version(name) ? { version: this.store.version(name) } : {}),
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

  /** A worker abandoned in native code makes the module unhealthy (an update in trial then rolls back). */
  health(): { ok: boolean; reason?: string } {
    const abandoned = this.poolReady?.stats().abandoned ?? 0;
    if (abandoned > 0) return { ok: false, reason: `${abandoned} task worker(s) stuck in native code were abandoned` };
    // A golden sample not run yet, or failed, keeps the agent unhealthy: an update on trial is not committed.
    for (const task of this.goldenTasks()) {
      const g = this.goldens.get(task);
      if (!g) return { ok: false, reason: `${task}: golden sample not run yet` };
      if (!g.ok) return { ok: false, reason: `${task}: ${g.reason ?? "golden sample failed"}` };
    }
    return { ok: true };
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
const round6 = (v: number) => Math.round(v * 1e6) / 1e6;
