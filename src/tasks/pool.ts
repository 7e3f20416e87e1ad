import { Worker } from "node:worker_threads";
import type { Code } from "../core/codes.ts";
import { errorMessage, OutpostError } from "../core/errors.ts";
import type { ProfileKind } from "../core/profile.ts";
import { countWorker } from "../core/threads.ts";
import { Breakers } from "./pool-breaker.ts";
import type { Job, PoolOptions, PoolResult, PoolRunOptions, Slot, TaskReply, TaskRequest } from "./pool-types.ts";
import { WORKER_CODES } from "./pool-types.ts";
import { profileWorker } from "./worker-profile.ts";

export type { PoolOptions, PoolResult, PoolRunOptions, TaskReply, TaskRequest };

/**
 * A fixed-size pool of worker threads with a bounded queue. A worker that crashes, exits, passes its heap limit
 * or runs past a task's timeout fails only that task, with its own code, and is replaced. `resourceLimits` cap
 * only the JavaScript heap: a worker stuck in native code cannot be terminated; after `terminateGraceMs` it is
 * abandoned (counted in `stats().abandoned`, which makes the pool unhealthy) and a new one takes its place.
 */
export class WorkerPool {
  private readonly o: Required<Omit<PoolOptions, "resourceLimits" | "workerData">> &
    Pick<PoolOptions, "resourceLimits" | "workerData">;
  private readonly slots = new Set<Slot>();
  private readonly queue: Job[] = [];
  private readonly breakers: Breakers;
  private nextId = 1;
  private closed = false;
  private counts = { completed: 0, failed: 0, replaced: 0, abandoned: 0, refused: 0, released: 0 };
  /** The last broadcast: a worker started later gets it first. */
  private control: unknown;

  constructor(options: PoolOptions) {
    this.o = {
      terminateGraceMs: 2000,
      cancelGraceMs: 1000,
      idleReleaseMs: 0,
      prefetch: 0,
      now: () => performance.now(),
      ...options,
    };
    this.breakers = new Breakers(this.o.breaker, () => this.o.now());
  }

  /** Runs a task; rejects at once with `QUEUE_FULL`, `CIRCUIT_OPEN` or `POOL_CLOSED` when it cannot be taken. */
  run(type: string, input: unknown, options: PoolRunOptions): Promise<PoolResult> {
    if (this.closed) return this.refuse("POOL_CLOSED", "the pool is closing");
    if (options.signal?.aborted) return this.refuse("TASK_ABORTED", "cancelled before it was queued");
    const open = this.breakers.admit(type);
    if (open !== undefined) return this.refuse("CIRCUIT_OPEN", open);
    const busy = [...this.slots].filter((s) => s.jobs.length).length;
    if (busy >= this.o.size && this.waiting() >= this.o.maxQueue) {
      this.breakers.notTaken(type);
      return this.refuse("QUEUE_FULL", `${this.waiting()} tasks waiting`);
    }
    return new Promise((resolve, reject) => {
      const job: Job = { id: this.nextId++, type, input, options, queuedAt: this.o.now(), resolve, reject };
      if (options.signal) {
        job.onAbort = () => this.abort(job);
        options.signal.addEventListener("abort", job.onAbort, { once: true });
      }
      this.queue.push(job);
      this.dispatch();
    });
  }

  /**
   * Tells every worker (and every worker started later) `message`, as `{ control: message }`; each answers with
   * its state. It comes after every task already given to the worker, and worker.ts applies it on arrival: a task
   * sent ahead and not yet started sees it first, as it would have from the pool's queue.
   */
  broadcast(message: unknown): void {
    this.control = message;
    for (const slot of this.slots) if (!slot.gone) slot.worker.postMessage({ control: message });
  }

  stats() {
    const slots = [...this.slots];
    return {
      workers: slots.length,
      busy: slots.filter((s) => s.jobs.length).length,
      queued: this.waiting(),
      ...this.counts,
      breakers: this.breakers.states(),
      /** Each live worker's last reported state, in start order. */
      states: slots.filter((s) => !s.gone).map((s) => s.state),
    };
  }

  /**
   * Profiles the n-th live worker (1: the first started; `task.list`'s `pool.sessions` is in the same order) in
   * its own thread (worker-profile.ts).
   */
  profile(n: number, kind: ProfileKind, ms: number, signal?: AbortSignal): Promise<unknown> {
    const live = [...this.slots].filter((s) => !s.gone);
    const slot = live[n - 1];
    if (!slot) return Promise.reject(new OutpostError("DIAG_NO_WORKER", `no worker ${n}: ${live.length} running`));
    // Not released while it is profiled: a profile of an idle worker is the usual case.
    clearTimeout(slot.idle);
    slot.idle = undefined;
    this.profiling.set(slot, (this.profiling.get(slot) ?? 0) + 1);
    return profileWorker(slot.worker, { n, id: this.nextId++, kind, ms, ...(signal ? { signal } : {}) }).finally(() => {
      const left = (this.profiling.get(slot) ?? 1) - 1;
      if (left > 0) this.profiling.set(slot, left);
      else this.profiling.delete(slot);
      this.armIdle();
    });
  }

  /**
   * Stops taking tasks and lets the running and queued ones finish until `signal` aborts; then fails what is
   * left with `POOL_CLOSED` and terminates every worker.
   */
  async close(signal: AbortSignal): Promise<void> {
    this.closed = true;
    await new Promise<void>((resolve) => {
      const check = () => {
        if (this.queue.length === 0 && ![...this.slots].some((s) => s.jobs.length)) finish();
      };
      const finish = () => {
        signal.removeEventListener("abort", finish);
        this.idleWaiters.delete(check);
        resolve();
      };
      if (signal.aborted) return finish();
      signal.addEventListener("abort", finish, { once: true });
      this.idleWaiters.add(check);
      check();
    });
    for (const job of this.queue.splice(0)) this.settle(job, new OutpostError("POOL_CLOSED", "the agent stopped"));
    await Promise.all(
      [...this.slots].map((slot) => {
        for (const [i, job] of slot.jobs.entries()) {
          if (job.cancelled) continue;
          this.settle(job, new OutpostError("POOL_CLOSED", i ? "the agent stopped" : "the agent stopped while it ran"));
        }
        return this.retire(slot, false);
      }),
    );
  }

  private readonly idleWaiters = new Set<() => void>();
  /** Profiles under way, by worker: one being profiled is not released. */
  private readonly profiling = new Map<Slot, number>();

  private refuse(code: Code, message: string): Promise<never> {
    this.counts.refused += 1;
    return Promise.reject(new OutpostError(code, message));
  }

  /** Tasks not yet started: in the queue, and sent ahead to a worker busy with another. */
  private waiting(): number {
    let n = this.queue.length;
    for (const slot of this.slots) for (const job of slot.jobs.slice(1)) if (!job.cancelled) n += 1;
    return n;
  }

  private dispatch(): void {
    while (this.queue.length > 0) {
      // Not a worker whose error came (it exits): a task given to it would fail for nothing.
      let slot = [...this.slots].find((s) => !s.jobs.length && !s.gone && !s.crashed);
      if (!slot && this.slots.size < this.o.size) slot = this.spawn();
      slot ??= this.aheadSlot();
      if (!slot) return;
      const job = this.queue.shift() as Job;
      clearTimeout(slot.idle);
      slot.idle = undefined;
      slot.jobs.push(job);
      if (slot.jobs.length === 1) this.begin(slot);
      const request: TaskRequest = { id: job.id, type: job.type, input: job.input };
      slot.worker.postMessage(request);
    }
    this.armIdle();
    for (const waiter of this.idleWaiters) waiter();
  }

  /**
   * Every worker is busy: the one with the fewest tasks sent ahead, if it may take one more, and of those the one
   * whose task started first. Not a worker that has not answered a task yet or is loading for its task (a load
   * takes seconds: the task waits here for whichever worker frees first), nor one whose task was cancelled (it
   * may be replaced when its grace ends).
   */
  private aheadSlot(): Slot | undefined {
    let best: Slot | undefined;
    for (const s of this.slots) {
      const head = s.jobs[0];
      if (s.gone || s.crashed || !s.warm || s.jobs.length > this.o.prefetch || head?.cancelled || head?.loading) {
        continue;
      }
      const fewer = best ? s.jobs.length - best.jobs.length : -1;
      if (fewer < 0 || (fewer === 0 && (head?.startedAt ?? 0) < (best?.jobs[0]?.startedAt ?? 0))) best = s;
    }
    return best;
  }

  /** The slot's first task starts now (the worker runs its tasks in order): its time starts. */
  private begin(slot: Slot): void {
    const job = slot.jobs[0];
    if (!job) return;
    job.startedAt = this.o.now();
    // A worker that has not answered a task yet loads its runtime first; one that has says `loading` when a task
    // needs a load (a model it does not hold), and nothing otherwise: a message less per task.
    job.loading = job.options.loadTimeoutMs !== undefined && !slot.warm;
    this.armFor(slot, job);
  }

  /**
   * The slot's timer for its first task: its load bound while it loads (cancelled or not: a new worker would
   * only start the load over), then its timeout, or its grace once cancelled (as a running task cancelled,
   * when it was sent ahead and cancelled too late to be skipped).
   */
  private armFor(slot: Slot, job: Job): void {
    const { loadTimeoutMs = 0, timeoutMs } = job.options;
    if (job.loading) this.arm(slot, loadTimeoutMs + timeoutMs, "ran past");
    else if (job.cancelled) this.arm(slot, this.o.cancelGraceMs, "cancelled, and still running after");
    else this.arm(slot, timeoutMs, "ran past");
  }

  /** The slot's first task is over: the next one sent ahead starts. */
  private next(slot: Slot): void {
    clearTimeout(slot.timer);
    slot.jobs.shift();
    this.begin(slot);
  }

  /** Every worker without a task is released after idleReleaseMs of waiting, unless a task comes first. */
  private armIdle(): void {
    const ms = this.o.idleReleaseMs;
    if (ms <= 0 || this.closed) return;
    for (const slot of this.slots) {
      if (slot.jobs.length || slot.gone || slot.idle || this.profiling.has(slot)) continue;
      slot.idle = setTimeout(() => {
        slot.idle = undefined;
        if (slot.jobs.length || slot.gone || this.closed || this.profiling.has(slot)) return;
        this.counts.released += 1;
        this.o.logger.info({ idleMs: ms, workers: this.slots.size - 1 }, "released an idle task worker");
        void this.retire(slot, false);
      }, ms);
      // Waiting to release a worker is no reason for the process to stay.
      slot.idle.unref();
    }
  }

  private spawn(): Slot {
    const worker = new Worker(this.o.source, {
      eval: true,
      workerData: this.o.workerData,
      ...(this.o.resourceLimits ? { resourceLimits: this.o.resourceLimits } : {}),
      // The worker's output would otherwise interleave with the agent's JSON log lines.
      stdout: true,
      stderr: true,
    });
    countWorker(worker);
    worker.stdout.resume();
    worker.stderr.on("data", (chunk: Buffer) => {
      this.o.logger.warn({ output: chunk.toString().slice(0, 500) }, "a task worker wrote to stderr");
    });
    const slot: Slot = { worker, jobs: [], warm: false, gone: false };
    if (this.control !== undefined) worker.postMessage({ control: this.control });
    worker.on("message", (reply: TaskReply) => this.reply(slot, reply));
    // The error is the task's, but it may reach us before an answer the worker posted earlier (an uncaught error
    // travels on Node's internal port): the worker fails at its exit, after every message it sent.
    worker.on("error", (err: Error & { code?: string }) => {
      const oom = err.code === "ERR_WORKER_OUT_OF_MEMORY";
      slot.crashed ??= { code: oom ? "TASK_OUT_OF_MEMORY" : "TASK_CRASHED", message: errorMessage(err) };
    });
    worker.on("exit", (code) => {
      const { crashed } = slot;
      this.fail(slot, crashed?.code ?? "TASK_EXITED", crashed?.message ?? `worker exited with code ${code}`);
    });
    this.slots.add(slot);
    return slot;
  }

  /** (Re)starts the slot's timeout: the task fails with TASK_TIMEOUT and its worker is replaced. */
  private arm(slot: Slot, ms: number, what: string): void {
    clearTimeout(slot.timer);
    slot.timer = setTimeout(() => this.fail(slot, "TASK_TIMEOUT", `${what} ${ms}ms`), ms);
  }

  private reply(slot: Slot, reply: TaskReply): void {
    if ("state" in reply && reply.state !== undefined) slot.state = reply.state;
    if ("control" in reply) return;
    const job = slot.jobs[0];
    if (slot.gone || !job || reply.id !== job.id) return;
    // Without a load bound, the timeout covers the load too.
    if ("loading" in reply || "ready" in reply) {
      const loading = "loading" in reply && job.options.loadTimeoutMs !== undefined;
      if (loading !== Boolean(job.loading)) {
        job.loading = loading;
        this.armFor(slot, job);
      }
      return;
    }
    slot.warm = true;
    this.next(slot);
    if (job.cancelled) {
      this.dispatch();
      return;
    }
    if ("skipped" in reply) {
      // Only a task the pool cancelled is skipped; a worker that skips another is not keeping the protocol.
      this.settle(job, new OutpostError("TASK_FAILED", "the worker skipped a task it was not told to cancel"));
    } else if (reply.ok) {
      this.counts.completed += 1;
      this.breakers.succeeded(job.type);
      job.options.signal?.removeEventListener("abort", job.onAbort ?? (() => {}));
      const { queuedAt, startedAt = queuedAt } = job;
      job.resolve({ value: reply.value, queueMs: startedAt - queuedAt, runMs: this.o.now() - startedAt });
    } else {
      const own = WORKER_CODES.get(reply.error.code ?? "");
      const err = own
        ? new OutpostError(own, reply.error.message)
        : new OutpostError("TASK_FAILED", reply.error.message, { details: reply.error.code });
      // A bad input is the caller's fault, not the task's: it must not open the breaker for everyone else.
      this.settle(job, err, own !== "TASK_INPUT_INVALID");
    }
    this.dispatch();
  }

  /** The worker failed under its task (or idle): the task fails with `code`, the worker is replaced. */
  private fail(slot: Slot, code: Code, message: string): void {
    if (slot.gone) return;
    const [job, ...ahead] = slot.jobs;
    clearTimeout(slot.timer);
    slot.jobs = [];
    if (job && !job.cancelled) this.settle(job, new OutpostError(code, message));
    // Sent ahead, not started (the worker runs them in order): back to the front of the queue, for another.
    this.queue.unshift(...ahead.filter((j) => !j.cancelled));
    if (!this.closed) {
      this.o.logger.warn({ code, message, task: job?.type, trace: job?.options.trace }, "task worker replaced");
    }
    void this.retire(slot, true);
    this.dispatch();
  }

  private abort(job: Job): void {
    const queued = this.queue.indexOf(job);
    if (queued >= 0) {
      this.queue.splice(queued, 1);
      this.settle(job, new OutpostError("TASK_ABORTED", "cancelled while queued"), false);
      this.dispatch();
      return;
    }
    const slot = [...this.slots].find((s) => s.jobs.includes(job));
    if (slot && slot.jobs[0] !== job && !job.cancelled) {
      // Sent ahead and not started: the worker is told to skip it (it says `skipped`, or ran it already).
      job.cancelled = true;
      this.settle(job, new OutpostError("TASK_ABORTED", "cancelled while queued"), false);
      slot.worker.postMessage({ cancel: job.id });
      return;
    }
    if (slot && !job.cancelled) {
      // The caller hears now. Only terminating stops code that is running, and a new worker loads everything
      // again: the run gets a grace to end on its own (the slot stays busy), then its worker is replaced.
      job.cancelled = true;
      this.settle(job, new OutpostError("TASK_ABORTED", "cancelled while running"), false);
      // A worker still loading (a runtime, a model) keeps the load bound it has: a new one would only start over.
      if (!job.loading) this.armFor(slot, job);
    }
  }

  /** Rejects a task; a failure counts against its type's breaker (a cancellation or a stop does not). */
  private settle(job: Job, err: OutpostError, counts = err.code !== "POOL_CLOSED"): void {
    job.options.signal?.removeEventListener("abort", job.onAbort ?? (() => {}));
    this.breakers.ended(job.type, counts);
    if (counts) this.counts.failed += 1;
    job.reject(err);
  }

  /** Terminates a worker; one that does not end within the grace period is abandoned, never waited for. */
  private async retire(slot: Slot, replaced: boolean): Promise<void> {
    if (slot.gone) return;
    slot.gone = true;
    clearTimeout(slot.idle);
    clearTimeout(slot.timer);
    this.slots.delete(slot);
    if (replaced) this.counts.replaced += 1;
    let timer: NodeJS.Timeout | undefined;
    const ended = await Promise.race([
      slot.worker.terminate().then(() => true),
      new Promise<false>((resolve) => {
        timer = setTimeout(() => resolve(false), this.o.terminateGraceMs);
      }),
    ]);
    clearTimeout(timer);
    if (!ended) {
      this.counts.abandoned += 1;
      slot.worker.unref();
      this.o.logger.error("a task worker did not end when terminated (stuck in native code): abandoned");
    }
  }
}
