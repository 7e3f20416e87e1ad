/** One task type's circuit: closed, open until a time, or half-open while one probe runs. */
interface Breaker {
  failures: number;
  openUntil: number | undefined;
  probing: boolean;
}

/**
 * The pool's breakers, one per task type: `failures` in a row open it for `openMs`; then one task probes, and
 * its verdict closes it or opens it again.
 */
export class Breakers {
  private readonly byType = new Map<string, Breaker>();

  private readonly o: { failures: number; openMs: number };
  private readonly now: () => number;

  constructor(o: { failures: number; openMs: number }, now: () => number) {
    this.o = o;
    this.now = now;
  }

  /** Why a task of `type` is refused now, or undefined: it is taken (as the probe, when half-open). */
  admit(type: string): string | undefined {
    const b = this.of(type);
    if (b.openUntil === undefined) return undefined;
    if (this.now() < b.openUntil || b.probing) return `${type} failed ${b.failures} times in a row`;
    b.probing = true; // half-open: this one task decides
    return undefined;
  }

  /** The task admitted was not taken after all (a full queue): another may probe. */
  notTaken(type: string): void {
    this.of(type).probing = false;
  }

  succeeded(type: string): void {
    const b = this.of(type);
    b.failures = 0;
    b.openUntil = undefined;
    b.probing = false;
  }

  /** A task ended without success; it counts unless it was cancelled, stopped or the caller's fault. */
  ended(type: string, counts: boolean): void {
    const b = this.of(type);
    // A probe that ends without a verdict (cancelled, a bad input) lets the next task probe instead.
    b.probing = false;
    if (!counts) return;
    b.failures += 1;
    if (b.failures >= this.o.failures) b.openUntil = this.now() + this.o.openMs;
  }

  states(): Record<string, "closed" | "open" | "half-open"> {
    return Object.fromEntries(
      [...this.byType].map(([type, b]) => [
        type,
        b.openUntil === undefined ? "closed" : b.probing || this.now() >= b.openUntil ? "half-open" : "open",
      ]),
    );
  }

  private of(type: string): Breaker {
    let b = this.byType.get(type);
    if (!b) {
      b = { failures: 0, openUntil: undefined, probing: false };
      this.byType.set(type, b);
    }
    return b;
  }
}
