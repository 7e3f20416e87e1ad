/** Metrics as nested objects: walking them into leaves, and merging a partial sample into a full one. */

export type Leaf = { segments: string[]; value: unknown };

export function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/**
 * The value at a path, dotted (`jetson.gpu.clockMHz`) or as segments, or undefined where the path leaves the
 * objects.
 */
export function valueAt(value: unknown, path: string | readonly string[]): unknown {
  let node = value;
  for (const key of typeof path === "string" ? path.split(".") : path) {
    if (node === null || typeof node !== "object") return undefined;
    node = (node as Record<string, unknown>)[key];
  }
  return node;
}

export function leaves(metrics: Record<string, unknown>, prefix: string[] = [], out: Leaf[] = []): Leaf[] {
  for (const [key, value] of Object.entries(metrics)) {
    const segments = [...prefix, key];
    if (isObject(value)) leaves(value, segments, out);
    else out.push({ segments, value });
  }
  return out;
}

/** Keys that would reach an object's prototype: a payload from the broker must not set them. */
export const PROTOTYPE_KEYS: ReadonlySet<string> = new Set(["__proto__", "constructor", "prototype"]);

export function put(target: Record<string, unknown>, segments: readonly string[], value: unknown): void {
  if (segments.some((s) => PROTOTYPE_KEYS.has(s))) return;
  let node = target;
  for (const key of segments.slice(0, -1)) {
    const child = node[key];
    if (isObject(child)) node = child;
    else {
      const created: Record<string, unknown> = {};
      node[key] = created;
      node = created;
    }
  }
  const last = segments[segments.length - 1];
  if (last !== undefined) node[last] = value;
}

/** A sample of metrics: the figures read, and per figure or collector that could not be, why not. */
export interface MetricsSample {
  metrics: Record<string, unknown>;
  errors: Record<string, string>;
}

/**
 * What a consumer does with a report: a full sample replaces the state, a partial one is merged into it
 * (objects key by key, anything else replaced). `errors`, when present, replaces the errors.
 */
export function mergeReport(
  state: MetricsSample | undefined,
  report: { full?: unknown; metrics?: unknown; errors?: unknown },
): MetricsSample {
  const metrics = isObject(report.metrics) ? report.metrics : {};
  const errors = isObject(report.errors) ? (report.errors as Record<string, string>) : undefined;
  // A message without `full` comes from an agent before change-aware reporting: every sample was full.
  if (report.full !== false || !state) return { metrics: structuredClone(metrics), errors: errors ?? {} };
  const merged = structuredClone(state.metrics);
  for (const leaf of leaves(metrics)) put(merged, leaf.segments, leaf.value);
  return { metrics: merged, errors: errors ?? state.errors };
}
