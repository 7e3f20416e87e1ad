/**
 * Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter"):
 * delay = random(0, min(cap, base * 2^attempt)). Full jitter spreads a fleet's reconnects after a
 * broker restart instead of letting every device hit it on the same tick.
 */
export interface BackoffOptions {
  baseMs: number;
  capMs: number;
  /** Returns a number in [0, 1); injected for tests. */
  random?: () => number;
}

export class Backoff {
  private attempt = 0;
  private readonly baseMs: number;
  private readonly capMs: number;
  private readonly random: () => number;

  constructor(options: BackoffOptions) {
    if (options.baseMs <= 0 || options.capMs < options.baseMs) {
      throw new RangeError("backoff needs 0 < baseMs <= capMs");
    }
    this.baseMs = options.baseMs;
    this.capMs = options.capMs;
    this.random = options.random ?? Math.random;
  }

  /** The ceiling for the next delay, before jitter. */
  ceiling(): number {
    // Cap the exponent so 2^attempt never overflows to Infinity on a long outage.
    const exp = Math.min(this.attempt, 30);
    return Math.min(this.capMs, this.baseMs * 2 ** exp);
  }

  next(): number {
    const delay = Math.floor(this.random() * this.ceiling());
    this.attempt += 1;
    return delay;
  }

  reset(): void {
    this.attempt = 0;
  }

  get attempts(): number {
    return this.attempt;
  }
}
