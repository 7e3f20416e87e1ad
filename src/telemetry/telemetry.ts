import { sleep } from "../core/clock.ts";
import { errorMessage, OutpostError } from "../core/errors.ts";
import { type Component, followAbort, once, withDeadline } from "../core/lifecycle.ts";
import type { Logger } from "../core/logger.ts";
import type { MetricsSample } from "../core/merge.ts";
import type { Heartbeat } from "../kernel/health.ts";
import { type Collector, WithErrors } from "../kernel/module.ts";

/** `errors`: collectors that failed, timed out or were still busy, with the reason. */
export type Sample = MetricsSample;

export interface TelemetryOptions {
  /** The collectors, or where to find them at each cycle (modules contribute them). */
  collectors: readonly Collector[] | (() => readonly Collector[]);
  intervalMs: () => number;
  timeoutMs: () => number;
  /** Where a sample goes: the outbox, through the telemetry module. */
  publish: (sample: Sample) => void;
  logger: Logger;
  /** Beaten at every cycle: a loop that stops beating is wedged. */
  heartbeat?: Heartbeat;
  /** The monotonic clock (ms): the kernel's, so that a test can move it. */
  now?: () => number;
}

/**
 * Polls every collector in parallel once per interval. A collector that fails or runs past the timeout is
 * reported as such and never delays the others; one still running from an earlier cycle, or for another
 * asker, is not started again but waited for.
 */
export class Telemetry implements Component {
  readonly name = "telemetry";
  private readonly options: TelemetryOptions;
  /** Each collector's collection under way: a second asker joins it rather than starting another. */
  private readonly busy = new Map<string, Promise<unknown>>();
  private readonly controller = new AbortController();
  private loop: Promise<void> | undefined;
  private cycles = 0;
  private lastSampleAt: number | undefined;
  /** Aborted to cut the current wait short: a stop, or a new interval (the wait is timed again). */
  private nap = new AbortController();

  constructor(options: TelemetryOptions) {
    this.options = options;
  }

  private now(): number {
    return this.options.now?.() ?? performance.now();
  }

  get count(): number {
    return this.cycles;
  }

  /** The clock's time (options.now) of the last published sample, if any. */
  get lastSample(): number | undefined {
    return this.lastSampleAt;
  }

  async start(signal: AbortSignal): Promise<void> {
    followAbort(signal, this.controller);
    this.controller.signal.addEventListener("abort", () => this.nap.abort(), { once: true });
    this.loop = this.run(this.controller.signal);
  }

  readonly stop = once(async () => {
    this.controller.abort();
    await this.loop;
  });

  /** Times the current wait again: a changed interval counts from the last sample, not after the old one. */
  wake(): void {
    this.nap.abort();
  }

  async sample(): Promise<Sample> {
    const timeout = this.options.timeoutMs();
    const metrics: Record<string, unknown> = {};
    const errors: Record<string, string> = {};
    const { collectors } = this.options;
    await Promise.all(
      (typeof collectors === "function" ? collectors() : collectors).map(async (collector) => {
        // `telemetry.now` while the loop collects, or a cycle after one that timed out: wait for the collection
        // under way (a collector with state, like the cpu delta, must not run twice at once), within the same
        // deadline. A collection that is still stuck is reported as busy.
        const joined = this.busy.get(collector.name);
        let work = joined;
        if (!work) {
          const started = collector.collect().finally(() => this.busy.delete(collector.name));
          // A late result or failure must not surface as an unhandled rejection.
          started.catch(() => {});
          this.busy.set(collector.name, started);
          work = started;
        }
        try {
          const value = await withDeadline(work, timeout, () =>
            joined !== undefined
              ? new OutpostError("TIMEOUT", "busy: the previous collection has not finished")
              : new OutpostError("TIMEOUT", `timeout after ${timeout}ms`),
          );
          if (value instanceof WithErrors) {
            if (Object.keys(value.value).length > 0) metrics[collector.name] = value.value;
            Object.assign(errors, value.errors);
          } else if (value !== null && value !== undefined) metrics[collector.name] = value;
        } catch (err) {
          errors[collector.name] = errorMessage(err);
        }
      }),
    );
    return { metrics, errors };
  }

  private async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      const started = this.now();
      this.options.heartbeat?.beat();
      try {
        const sample = await this.sample();
        if (signal.aborted) break;
        this.options.publish(sample);
        this.cycles += 1;
        this.lastSampleAt = this.now();
        this.options.logger.debug({ cycle: this.cycles }, "telemetry sampled");
      } catch (err) {
        this.options.logger.error({ err }, "telemetry cycle failed");
      }
      // A new interval (wake) counts from this sample's start: sooner when shorter, later when longer, and
      // never a sample of its own (on a metered link, each change of the pace would cost one).
      while (!signal.aborted) {
        const wait = started + this.options.intervalMs() - this.now();
        this.nap = new AbortController();
        // A cycle that overran still yields (sleep(0)): timers, I/O and a stop get their turn between cycles.
        await sleep(Math.max(0, wait), this.nap.signal);
        if (wait <= 0 || !this.nap.signal.aborted) break;
      }
    }
  }
}
