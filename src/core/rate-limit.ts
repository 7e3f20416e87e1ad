/**
 * A token bucket: `capacity` events at once, refilled at `perSecond`. Time comes from the caller's monotonic
 * clock, so tests move it by hand.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;
  private readonly capacity: number;
  private readonly perMs: number;
  private readonly mono: () => number;

  constructor(options: { capacity: number; perSecond: number; mono: () => number }) {
    this.capacity = options.capacity;
    this.tokens = options.capacity;
    this.perMs = options.perSecond / 1000;
    this.mono = options.mono;
    this.last = options.mono();
  }

  /** True, using a token, if one is available now. */
  take(): boolean {
    const now = this.mono();
    this.tokens = Math.min(this.capacity, this.tokens + Math.max(0, now - this.last) * this.perMs);
    this.last = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}
