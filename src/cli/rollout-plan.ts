// A rollout's plan (issue 26): which devices update in which wave, and the rules that let a wave start, pass
// or pause the rollout. Frozen when the rollout is made: the same target, waves and seed give the same plan.
import { createHash } from "node:crypto";

/** One wave's size, cumulative: a count of devices, or a percentage of the target. */
export type WaveSize = { count: number } | { percent: number };

export interface RolloutPolicy {
  waves: WaveSize[];
  /** Chooses the order of the devices that are not canaries: printed, so that a plan can be made again. */
  seed: string;
  /** Devices named to go first, in the first wave, in this order. */
  canaries: string[];
  /** Share of a later wave's reachable devices that must have committed before the next starts (0-1). */
  success: number;
  /** How long a wave must have met its success threshold before the next starts. */
  soakMs: number;
  /** Share of a later wave's finished devices that failed, past which the rollout pauses (0-1). */
  failure: number;
  /** Failures are judged once at least this many devices of the wave finished. */
  minFinished: number;
  /** A device that has not committed this long after it was asked counts as failed (timed out). */
  deadlineMs: number;
  /** At most this many devices updating at once; undefined: a wave at once. */
  cap?: number;
  /** An operator approves each wave after the first before it starts. */
  approval: boolean;
}

export const DEFAULT_WAVES = "1,10%,50%,100%";

export const DEFAULT_POLICY: Omit<RolloutPolicy, "waves" | "seed"> = {
  canaries: [],
  success: 0.95,
  soakMs: 5 * 60_000,
  failure: 0.05,
  minFinished: 3,
  deadlineMs: 30 * 60_000,
  approval: false,
};

/** `1,10%,50%,100%`: cumulative sizes, each a count or a percentage; each larger than the one before. */
export function parseWaves(text: string): WaveSize[] {
  const parts = text.split(",").map((p) => p.trim());
  if (parts.length === 0 || parts.some((p) => p === "")) throw new Error(`waves: expected e.g. ${DEFAULT_WAVES}`);
  return parts.map((p) => {
    const percent = /^(\d+(?:\.\d+)?)%$/.exec(p);
    if (percent) {
      const value = Number(percent[1]);
      if (!(value > 0 && value <= 100)) throw new Error(`waves: ${p} is not a percentage from 0 to 100`);
      return { percent: value };
    }
    if (!/^\d+$/.test(p) || Number(p) < 1) throw new Error(`waves: ${p} is neither a count nor a percentage`);
    return { count: Number(p) };
  });
}

/**
 * The order of the devices: canaries first as named, then the rest by sha256(seed, id), so that the same seed
 * gives the same order whatever order the target was listed in.
 */
export function orderDevices(
  devices: readonly string[],
  seed: string,
  canaries: readonly string[],
  last: readonly string[] = [],
): string[] {
  const unique = [...new Set(devices)];
  const missing = canaries.filter((c) => !unique.includes(c));
  if (missing.length > 0) throw new Error(`canaries not in the target: ${missing.join(", ")}`);
  const rank = (id: string) => createHash("sha256").update(`${seed}\n${id}`).digest("hex");
  const ordered = (ids: string[]) =>
    ids
      .map((d) => ({ d, r: rank(d) }))
      .sort((a, b) => (a.r < b.r ? -1 : a.r > b.r ? 1 : a.d < b.d ? -1 : 1))
      .map(({ d }) => d);
  const rest = unique.filter((d) => !canaries.includes(d));
  // `last` (a group's members known only from their statuses) after every other, in the seed's order too.
  return [
    ...new Set(canaries),
    ...ordered(rest.filter((d) => !last.includes(d))),
    ...ordered(rest.filter((d) => last.includes(d))),
  ];
}

/**
 * The waves: each size is cumulative and rounded up (10 % of 12 devices is 2), a size no larger than the one
 * before adds no wave (never an empty wave), and the canaries all go in the first wave. What the last size
 * leaves out (`1,10%` of 300) is not in the rollout.
 */
export function planWaves(
  devices: readonly string[],
  policy: Pick<RolloutPolicy, "waves" | "seed" | "canaries">,
  last: readonly string[] = [],
) {
  const order = orderDevices(devices, policy.seed, policy.canaries, last);
  const total = order.length;
  const waves: string[][] = [];
  let done = 0;
  for (const [i, size] of policy.waves.entries()) {
    let upTo = "count" in size ? size.count : Math.ceil((size.percent * total) / 100 - 1e-9);
    if (i === 0) upTo = Math.max(upTo, policy.canaries.length);
    upTo = Math.min(upTo, total);
    if (upTo <= done) continue;
    waves.push(order.slice(done, upTo));
    done = upTo;
  }
  return { waves, left: order.slice(done) };
}

/** Whether a wave has passed: enough of its reachable devices committed (all of them in the first wave). */
export function wavePassed(
  wave: number,
  counts: { reachable: number; committed: number },
  policy: Pick<RolloutPolicy, "success">,
): boolean {
  if (counts.reachable === 0) return true;
  const needed = wave === 0 ? counts.reachable : Math.ceil(policy.success * counts.reachable - 1e-9);
  return counts.committed >= needed;
}

/**
 * Whether a wave's failures pause the rollout: any failure in the first wave (the canaries); in a later one,
 * more than the failure share of those finished, once enough finished to judge.
 */
export function wavePauses(
  wave: number,
  counts: { finished: number; failed: number },
  policy: Pick<RolloutPolicy, "failure" | "minFinished">,
): boolean {
  if (counts.failed === 0) return false;
  if (wave === 0) return true;
  return counts.finished >= policy.minFinished && counts.failed / counts.finished > policy.failure;
}
