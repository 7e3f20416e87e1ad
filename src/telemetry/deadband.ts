import { leaves, put } from "../core/merge.ts";

/**
 * Change-aware reporting: between full samples only the metrics that moved past their deadband are sent.
 * A leaf is a number, string, boolean, null or array (arrays are compared whole, element by element); objects
 * are walked. Rules are dotted paths whose segments may be `*`; the most specific matching rule wins.
 */

export interface ChangePolicy {
  /** Path -> the smallest change worth sending (0: any change). */
  deadbands: Readonly<Record<string, number>>;
  /** Paths sent in full samples only: counters that move on every sample. */
  fullOnly: readonly string[];
  fullIntervalMs: number;
  /** The sampling interval: a full sample is due half an interval early, so that jitter never skips one. */
  intervalMs: number;
}

export interface Report {
  full: boolean;
  metrics: Record<string, unknown>;
  /** Present in a full sample when there are errors, and in a partial one when they changed ({} = cleared). */
  errors?: Record<string, string>;
}

/** How specific a rule is for `segments`: -1 when it does not match (a rule matches a path or a prefix of it). */
function specificity(rule: readonly string[], segments: readonly string[]): number {
  if (rule.length > segments.length) return -1;
  let score = 0;
  for (let i = 0; i < rule.length; i++) {
    if (rule[i] === "*") continue;
    if (rule[i] !== segments[i]) return -1;
    score += 1;
  }
  // Longer rules beat shorter ones; at equal length, named segments beat wildcards.
  return rule.length * 100 + score;
}

function bestRule<T>(rules: readonly [string[], T][], segments: readonly string[]): T | undefined {
  let best: T | undefined;
  let bestScore = -1;
  for (const [rule, value] of rules) {
    const s = specificity(rule, segments);
    if (s > bestScore) {
      best = value;
      bestScore = s;
    }
  }
  return best;
}

function moved(previous: unknown, next: unknown, band: number): boolean {
  if (typeof previous === "number" && typeof next === "number") {
    return band > 0 ? Math.abs(next - previous) >= band : next !== previous;
  }
  if (Array.isArray(previous) && Array.isArray(next)) {
    if (previous.length !== next.length) return true;
    return next.some((v, i) => moved(previous[i], v, band));
  }
  return JSON.stringify(previous) !== JSON.stringify(next);
}

type Rules = { bands: [string[], number][]; fullOnly: [string[], true][] };
const compiledRules = new WeakMap<ChangePolicy, Rules>();

/** A policy's rules split into segments, once per policy object. */
function compiled(policy: ChangePolicy): Rules {
  let rules = compiledRules.get(policy);
  if (!rules) {
    rules = {
      bands: Object.entries(policy.deadbands).map(([rule, band]): [string[], number] => [rule.split("."), band]),
      fullOnly: policy.fullOnly.map((rule): [string[], true] => [rule.split("."), true]),
    };
    compiledRules.set(policy, rules);
  }
  return rules;
}

/**
 * Decides, sample by sample, what goes out: a full sample at the first call and every `fullIntervalMs`, in
 * between only what moved past its deadband since it was last sent, and nothing when nothing did.
 */
export class ChangeFilter {
  private readonly sent = new Map<string, unknown>();
  private lastFullAt: number | undefined;
  private sentErrors = "[]";

  /** Forces the next sample to be full (after a reconnect or a config change, say). */
  reset(): void {
    this.lastFullAt = undefined;
  }

  decide(
    metrics: Record<string, unknown>,
    errors: Record<string, string>,
    now: number,
    policy: ChangePolicy,
  ): Report | undefined {
    // Sorted: collectors finish in any order, and the same errors must compare equal.
    const errorsText = JSON.stringify(Object.entries(errors).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    const all = leaves(metrics);
    if (this.lastFullAt === undefined || now - this.lastFullAt + policy.intervalMs / 2 >= policy.fullIntervalMs) {
      this.lastFullAt = now;
      this.sent.clear();
      for (const leaf of all) this.sent.set(JSON.stringify(leaf.segments), leaf.value);
      this.sentErrors = errorsText;
      return { full: true, metrics, ...(Object.keys(errors).length > 0 ? { errors } : {}) };
    }
    const { bands, fullOnly } = compiled(policy);
    const partial: Record<string, unknown> = {};
    let changed = false;
    for (const leaf of all) {
      if (bestRule(fullOnly, leaf.segments)) continue;
      const key = JSON.stringify(leaf.segments);
      const band = bestRule(bands, leaf.segments) ?? 0;
      if (this.sent.has(key) && !moved(this.sent.get(key), leaf.value, band)) continue;
      this.sent.set(key, leaf.value);
      put(partial, leaf.segments, leaf.value);
      changed = true;
    }
    const errorsChanged = errorsText !== this.sentErrors;
    if (!changed && !errorsChanged) return undefined;
    this.sentErrors = errorsText;
    return { full: false, metrics: partial, ...(errorsChanged ? { errors } : {}) };
  }
}
