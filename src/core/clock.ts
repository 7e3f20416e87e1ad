import { performance } from "node:perf_hooks";

/** Wall time and monotonic time, injected so that tests control both. */
export interface Clock {
  /** Wall-clock epoch milliseconds; may jump (NTP, boards without an RTC). */
  now(): number;
  /** Monotonic milliseconds since an arbitrary origin; never goes back. */
  mono(): number;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  mono: () => performance.now(),
};

/** A clock whose time only moves when a test says so. */
export class ManualClock implements Clock {
  private wall: number;
  private monotonic = 0;

  constructor(wall = 0) {
    this.wall = wall;
  }

  now(): number {
    return this.wall;
  }

  mono(): number {
    return this.monotonic;
  }

  advance(ms: number): void {
    this.wall += ms;
    this.monotonic += ms;
  }
}

/**
 * Resolves after `ms`, or as soon as `signal` aborts (resolving, not rejecting: loops check
 * `signal.aborted` themselves, and a stop is not an error). `unref`: the wait alone does not keep the
 * process alive (for housekeeping loops).
 */
export function sleep(ms: number, signal?: AbortSignal, options: { unref?: boolean } = {}): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) {
      resolve();
      return;
    }
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    if (options.unref) timer.unref();
    signal?.addEventListener("abort", done, { once: true });
  });
}
