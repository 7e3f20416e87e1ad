/** A `threshold` task: a limit on one telemetry metric that must hold for a while before its alarm is raised. */
export interface ThresholdSpec {
  metric: string;
  above?: number | undefined;
  below?: number | undefined;
  forMs: number;
  /** The value must come back this far inside the limit to clear the alarm, so that it does not flap. */
  hysteresis: number;
}

export type ThresholdChange =
  | { active: true; metric: string; value: number; limit: string; heldMs: number }
  | { active: false; metric: string; value: number | null; limit: string };

/**
 * Raises once the condition has held for `forMs` (on every observation in between), clears once the value is
 * back inside the limit by the hysteresis. A missing value (the metric could not be read) neither raises nor
 * clears: it resets the pending raise, since the condition was not seen to hold.
 */
export class ThresholdRule {
  private readonly spec: ThresholdSpec;
  private pendingSince: number | undefined;
  private active = false;

  constructor(spec: ThresholdSpec) {
    this.spec = spec;
  }

  private limit(): string {
    const parts: string[] = [];
    if (this.spec.above !== undefined) parts.push(`above ${this.spec.above}`);
    if (this.spec.below !== undefined) parts.push(`below ${this.spec.below}`);
    return parts.join(" or ");
  }

  private outside(v: number, margin: number): boolean {
    const { above, below } = this.spec;
    return (above !== undefined && v > above - margin) || (below !== undefined && v < below + margin);
  }

  /** The value at `nowMs` (monotonic); returns the alarm's new state when it changes. */
  observe(value: unknown, nowMs: number): ThresholdChange | undefined {
    const v = typeof value === "number" && Number.isFinite(value) ? value : undefined;
    if (v === undefined) {
      this.pendingSince = undefined;
      return undefined;
    }
    if (!this.active) {
      if (!this.outside(v, 0)) {
        this.pendingSince = undefined;
        return undefined;
      }
      this.pendingSince ??= nowMs;
      if (nowMs - this.pendingSince < this.spec.forMs) return undefined;
      this.active = true;
      return {
        active: true,
        metric: this.spec.metric,
        value: v,
        limit: this.limit(),
        heldMs: nowMs - this.pendingSince,
      };
    }
    // Still outside once the hysteresis is counted: stays raised.
    if (this.outside(v, this.spec.hysteresis)) return undefined;
    this.active = false;
    this.pendingSince = undefined;
    return { active: false, metric: this.spec.metric, value: v, limit: this.limit() };
  }

  get raised(): boolean {
    return this.active;
  }

  /** The dotted telemetry path the rule watches. */
  get metric(): string {
    return this.spec.metric;
  }
}
