import { type MetricsSample, mergeReport } from "../core/merge.ts";

export type Values = MetricsSample;

/**
 * The device's latest figures, for whoever serves them elsewhere (Prometheus, Home Assistant): `sampled` is
 * the last sample as collected, `merged` what a consumer of `P/D/telemetry` holds after merging the full and
 * partial reports sent so far. The telemetry module writes; others read, and may listen for `merged` changes.
 */
export class LatestValues {
  private last: Values | undefined;
  private state: Values | undefined;
  private readonly listeners = new Set<(merged: Values) => void>();
  private readonly onError: (err: unknown) => void;

  /** `onError` hears a listener that threw: one listener's fault must not stop a sample being reported. */
  constructor(onError: (err: unknown) => void) {
    this.onError = onError;
  }

  sampled(): Values | undefined {
    return this.last;
  }

  merged(): Values | undefined {
    return this.state;
  }

  /** A new sample, and the report that went out for it (none when nothing moved past its deadband). */
  update(
    sampled: Values,
    report: { full: boolean; metrics: Record<string, unknown>; errors?: unknown } | undefined,
  ): void {
    this.last = sampled;
    if (!report) return;
    this.state = mergeReport(this.state, report);
    for (const listener of this.listeners) {
      try {
        listener(this.state);
      } catch (err) {
        this.onError(err);
      }
    }
  }

  /** Calls `listener` on every change of `merged`; returns the function that stops it. */
  onChange(listener: (merged: Values) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
