const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
/** What a duration looks like; also the `pattern` of every duration in the JSON Schema. */
export const DURATION_PATTERN = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/;
const PATTERN = DURATION_PATTERN;

/** Parses "500ms", "10s", "1.5m", "2h", "1d" into milliseconds; returns undefined for anything else. */
export function parseDuration(text: string): number | undefined {
  const match = PATTERN.exec(text.trim());
  if (!match) return undefined;
  const [, amount, unit] = match;
  const factor = UNITS[unit ?? ""];
  if (amount === undefined || factor === undefined) return undefined;
  const ms = Number(amount) * factor;
  return Number.isFinite(ms) ? Math.round(ms) : undefined;
}

/** Like parseDuration, for values the schema has already validated. */
export function durationMs(text: string): number {
  const ms = parseDuration(text);
  if (ms === undefined) throw new RangeError(`not a duration: ${JSON.stringify(text)}`);
  return ms;
}

/** The shortest exact rendering: 1500 -> "1500ms", 60000 -> "1m". */
export function formatDuration(ms: number): string {
  for (const unit of ["d", "h", "m", "s"] as const) {
    const factor = UNITS[unit] ?? 1;
    if (ms >= factor && ms % factor === 0) return `${ms / factor}${unit}`;
  }
  return `${ms}ms`;
}
