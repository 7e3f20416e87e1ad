import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { errorMessage, isOutpostError, OutpostError } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";
import type { TaskDefinition, TasksConfig } from "./config.ts";
import { ModelStore } from "./models.ts";
import type { RunRequest, TaskInput, TaskResult } from "./runner.ts";
import type { WorkerControl } from "./worker.ts";

export interface TaskModelsOptions {
  stateDir: string;
  config: TasksConfig;
  logger: Logger;
  definition(task: string): TaskDefinition;
  /** Runs a task without publishing (a golden sample). */
  evaluate(task: string, input: TaskInput, request: RunRequest): Promise<TaskResult>;
  /** Loads a model file in a worker and describes it: that it loads at all. */
  describe(task: string, model: string, def: { timeout: number }): Promise<void>;
  /** Tells every worker which model files are still in use. */
  retain(control: WorkerControl): void;
}

type Verdict = { ok: boolean; reason?: string };

/**
 * Which model file each task runs (a delivered one, else the configured one), model updates tried on a task
 * while every other run keeps its model, and the golden samples' verdicts that the module's health needs.
 */
export class TaskModels {
  private readonly o: TaskModelsOptions;
  private readonly store: ModelStore;
  /** Each golden sample's last verdict: undefined until it ran. */
  private readonly goldens = new Map<string, Verdict>();
  /** A model under test, by the trace of the one run that checks it: every other task keeps its model. */
  private readonly candidates = new Map<string, string>();

  constructor(options: TaskModelsOptions) {
    this.o = options;
    this.store = new ModelStore(options.stateDir, Object.keys(options.config.define));
  }

  /** The release version of a task's delivered model, if it has one. */
  version(task: string): string | undefined {
    return this.store.version(task);
  }

  /** A golden sample not run yet, or failed, keeps the agent unhealthy: an update on trial is not committed. */
  health(): Verdict {
    for (const task of this.goldenTasks()) {
      const g = this.goldens.get(task);
      if (!g) return { ok: false, reason: `${task}: golden sample not run yet` };
      if (!g.ok) return { ok: false, reason: `${task}: ${g.reason ?? "golden sample failed"}` };
    }
    return { ok: true };
  }

  /** The model file a task runs: a delivered one (model update), else the one its configuration names. */
  modelOf(name: string, def: { model: string }, trace?: string): string {
    return (trace === undefined ? undefined : this.candidates.get(trace)) ?? this.store.path(name) ?? def.model;
  }

  /** Where a task's model is now and its release version, for a model update. */
  current(task: string): { path: string; version?: string } {
    const def = this.o.definition(task);
    if (!("model" in def)) throw new OutpostError("OTA_KIND_UNSUPPORTED", `${task} is a ${def.type} task: no model`);
    const version = this.store.version(task);
    return { path: this.modelOf(task, def), ...(version ? { version } : {}) };
  }

  /**
   * Tries a verified model file on a task: placed beside the others, checked (its golden sample, or at least
   * that it loads) while every other run keeps the current model, then kept (the task switches) or removed.
   */
  async install(
    task: string,
    file: string,
    release: { version: string; sha256: string },
  ): Promise<{ state: "committed" } | { state: "rolled-back"; reason: string }> {
    this.current(task);
    const placed = this.store.place(task, file, release);
    const verdict = await this.checkModel(task, placed.path);
    if (!verdict.ok) {
      this.store.discard(task, placed);
      this.retain();
      this.o.logger.warn({ task, version: release.version, reason: verdict.reason }, "model update rolled back");
      return { state: "rolled-back", reason: verdict.reason ?? "the new model failed its check" };
    }
    this.store.keep(task, placed);
    this.retain();
    // The check was the golden sample on this very model: it holds for the task's health now.
    if (this.goldenTasks().includes(task)) this.goldens.set(task, verdict);
    this.o.logger.info({ task, version: release.version }, "model update committed");
    return { state: "committed" };
  }

  /** A candidate model checked with the task's golden sample when it has one, else by loading it. */
  private async checkModel(task: string, candidate: string): Promise<{ ok: boolean; reason?: string }> {
    const def = this.o.definition(task);
    if (def.type === "classify-image" && def.golden) return this.golden(task, candidate);
    if (!("model" in def)) return { ok: true };
    try {
      await this.o.describe(task, candidate, def);
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
    const def = this.o.definition(task);
    if (def.type !== "classify-image" || !def.golden) return { ok: true };
    const g = def.golden;
    const trace = randomUUID();
    if (candidate) {
      this.candidates.set(trace, candidate);
      this.retain();
    }
    let verdict: { ok: boolean; reason?: string };
    try {
      const image = readFileSync(g.image);
      const r = await this.o.evaluate(task, { image, file: g.image }, { source: "golden", trace });
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
  retain(): void {
    const keep = new Set<string>(this.candidates.values());
    for (const [name, def] of Object.entries(this.o.config.define)) {
      if ("model" in def) keep.add(this.modelOf(name, def));
    }
    this.o.retain({ retain: [...keep] });
  }

  /** Tasks with a golden sample. */
  goldenTasks(): string[] {
    return Object.entries(this.o.config.define)
      .filter(([, def]) => def.type === "classify-image" && def.golden !== undefined)
      .map(([name]) => name);
  }
}
