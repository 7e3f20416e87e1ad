import type { ResourceLimits, Worker } from "node:worker_threads";
import type { Code } from "../core/codes.ts";
import type { OutpostError } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";

/**
 * What a worker receives and answers. The worker's source (a bundle, run with `eval: true` as inside the single
 * executable, where a worker cannot be started from a file) handles `{ id, type, input }` and posts back
 * `{ id, ok: true, value }` or `{ id, ok: false, error: { message, code? } }`.
 */
export interface TaskRequest {
  id: number;
  type: string;
  input: unknown;
}
export type TaskReply =
  | { id: number; ok: true; value: unknown; state?: unknown }
  | { id: number; ok: false; error: { message: string; code?: string }; state?: unknown }
  /**
   * The task needs a load first (a runtime, a model): its load bound applies until `ready`, when the worker has
   * what the task needs and starts the work itself. A worker says neither for a task that needs no load.
   */
  | { id: number; loading: true }
  | { id: number; ready: true }
  /** A task sent ahead that the pool then cancelled (`{ cancel: id }`), not started. */
  | { id: number; skipped: true }
  /** The answer to a broadcast `{ control }`: what the worker holds now (shown in `stats().states`). */
  | { control: true; state: unknown };

export interface PoolOptions {
  source: string;
  /** Handed to every worker as `workerData`. */
  workerData?: unknown;
  /** Workers at most; created on demand, so a pool that never runs a task starts none. */
  size: number;
  /** Tasks waiting for a worker at most; beyond, `QUEUE_FULL` at once. */
  maxQueue: number;
  resourceLimits?: ResourceLimits;
  /** Consecutive failures of one task type that open its breaker, and how long it stays open. */
  breaker: { failures: number; openMs: number };
  /** How long a worker being replaced may take to terminate before it is abandoned (a hang in native code). */
  terminateGraceMs?: number;
  /**
   * How long a task cancelled while it runs may go on, its result dropped, before its worker is replaced
   * (default 1 s). An inference takes milliseconds; a new worker loads the runtime and the model again, which
   * a check group that cancels its other checks on every failed part paid each time.
   */
  cancelGraceMs?: number;
  /**
   * How long a worker may wait for a task before it is released (terminated: its isolate, runtime arenas and
   * sessions given back; the next task starts a new one and loads again). 0 or absent: kept for good.
   */
  idleReleaseMs?: number;
  /**
   * Tasks sent ahead to a busy worker, beyond the one it runs, while the queue is not empty (default 0). The
   * worker then has its next task when it answers, instead of waiting a round trip through the main thread for
   * it; with tasks of tens of µs that wait was as long as the task. A worker given this runs its tasks one at a
   * time in the order they came, and skips one not started when told `{ cancel: id }`. A task sent ahead waits
   * behind at most this many on its worker, even if another worker frees first; one that worker fails under
   * goes back to the front of the queue, since it never started.
   */
  prefetch?: number;
  now?: () => number;
  logger: Logger;
}

export interface PoolRunOptions {
  timeoutMs: number;
  /**
   * How long the worker may take to get ready (load a runtime, compile WebAssembly, create a session) before
   * the timeout starts. It applies to a worker's first task until the worker says `ready`, and to any later one
   * from when the worker says `loading` until `ready`; then `timeoutMs`. Without it, `timeoutMs` covers all.
   */
  loadTimeoutMs?: number;
  signal?: AbortSignal;
  /** Put on the pool's log lines about this task (the trace id of its result). */
  trace?: string;
}

export interface PoolResult {
  value: unknown;
  /** Time in the queue, then in a worker. */
  queueMs: number;
  runMs: number;
}

/** A task the pool holds, queued or given to a worker. */
export interface Job {
  id: number;
  type: string;
  input: unknown;
  options: PoolRunOptions;
  queuedAt: number;
  /** When its worker started it: when it was given to an idle worker, or the task before it on its worker ended. */
  startedAt?: number;
  resolve(result: PoolResult): void;
  reject(err: OutpostError): void;
  onAbort?: () => void;
  /** Cancelled once given to a worker (running or sent ahead): already settled; its worker's answer is dropped. */
  cancelled?: boolean;
  /** Its worker loads what it needs (its first task, or it said `loading`) and has not said `ready` yet. */
  loading?: boolean;
}

/** A worker and what the pool knows of it. */
export interface Slot {
  worker: Worker;
  /** The task it runs, then those sent ahead to wait in the worker (PoolOptions.prefetch), in order. */
  jobs: Job[];
  /**
   * It has answered a task (its runtime loaded, or failed to: either way a later load is said with `loading`):
   * only then is a task sent ahead to it.
   */
  warm: boolean;
  /** Its uncaught error or heap overflow, kept until it exits. */
  crashed?: { code: Code; message: string } | undefined;
  timer?: NodeJS.Timeout | undefined;
  /** Set once the slot is being replaced: later events of its worker are ignored. */
  gone: boolean;
  /** What the worker last said it holds (its replies' `state`). */
  state?: unknown;
  /** Armed while the worker waits for a task: it is released when it fires (idleReleaseMs). */
  idle?: NodeJS.Timeout | undefined;
}

/** Codes a worker may answer with that reach the caller as they are; any other failure is `TASK_FAILED`. */
export const WORKER_CODES = new Map<string, Code>(
  (["TASK_INPUT_INVALID", "TASK_MODEL_INVALID", "TASK_RUNTIME_UNAVAILABLE", "TASK_FAILED"] as const).map((c) => [c, c]),
);
