// What `ctl rollout status` and a driving `ctl rollout` show: read from the journal only, so that any ctl on
// the operator's machine can look while a driver runs (or after it was killed).
import { printable } from "./answer-trust.ts";
import { FINISHED, type RolloutJournal, type RolloutRow, type WaveCounts, waveCounts } from "./rollout-journal.ts";

export interface RolloutStatus {
  id: string;
  state: RolloutRow["state"];
  reason: string | null;
  waiting: string | null;
  created: string;
  by: string;
  machine: string;
  broker: string;
  releases: { arch: string; kind: string; version: string; sha256: string }[];
  driver: { holder: string; pid: number; machine: string; expires: string } | null;
  waves: ({ wave: number; started: string | null; passed: string | null; approved: string | null } & WaveCounts)[];
  /** Devices not committed (all of them with `all`), with what they last said. */
  devices: {
    device: string;
    wave: number;
    state: string;
    said: string | null;
    code: string | null;
    reason: string | null;
  }[];
  events: { at: string; by: string; what: string }[];
}

const iso = (t: number | null) => (t === null ? null : new Date(t).toISOString());

export function rolloutStatus(journal: RolloutJournal, r: RolloutRow, all = false): RolloutStatus {
  const plan = journal.plan(r);
  const rows = journal.devices(r.id);
  const lease = journal.leaseOf(r.id);
  return {
    id: r.id,
    state: r.state,
    reason: r.reason,
    waiting: r.state === "running" || r.state === "paused" ? r.waiting : null,
    created: iso(r.created) ?? "",
    by: r.by,
    machine: r.machine,
    broker: r.broker,
    releases: plan.releases.map(({ arch, kind, version, sha256 }) => ({ arch, kind, version, sha256 })),
    driver: lease
      ? { holder: lease.holder, pid: lease.pid, machine: lease.machine, expires: iso(lease.expires) ?? "" }
      : null,
    waves: journal.waves(r.id).map((w) => ({
      wave: w.wave + 1,
      started: iso(w.started),
      passed: iso(w.met),
      approved: w.approved,
      ...waveCounts(rows.filter((d) => d.wave === w.wave)),
    })),
    devices: rows
      .filter((d) => all || (d.state !== "committed" && (FINISHED.has(d.state) || d.state !== "pending" || !d.present)))
      .map((d) => ({
        device: d.device,
        wave: d.wave + 1,
        state: d.state === "pending" && !d.present ? "offline" : d.state,
        said: d.said,
        code: d.code,
        reason: d.reason,
      })),
    events: journal.events(r.id).map((e) => ({ at: iso(e.at) ?? "", by: e.by, what: e.what })),
  };
}

const COLUMNS = [
  ["pending", "pending"],
  ["offline", "offline"],
  ["inFlight", "in-flight"],
  ["committed", "committed"],
  ["rolledBack", "rolled-back"],
  ["failed", "failed"],
  ["timedOut", "timed-out"],
] as const;

/** The per-wave table: one line per wave, with its counts and where it stands. */
export function waveTable(s: RolloutStatus): string[] {
  const head = `wave  devices  ${COLUMNS.map(([, h]) => h.padStart(12)).join("")}  state`;
  const lines = s.waves.map((w) => {
    const where = w.passed
      ? `passed ${w.passed.slice(11, 19)}`
      : w.started
        ? `started ${w.started.slice(11, 19)}`
        : "waiting";
    return `${String(w.wave).padStart(4)}  ${String(w.total).padStart(7)}  ${COLUMNS.map(([k]) => String(w[k]).padStart(12)).join("")}  ${where}`;
  });
  return [head, ...lines];
}

export function statusText(s: RolloutStatus, maxDevices = 20): string {
  const out = [
    `rollout ${s.id}: ${s.state}${s.reason ? ` (${s.reason})` : ""}`,
    `  made ${s.created} by ${s.by} on ${s.machine}, broker ${s.broker}`,
    ...s.releases.map((r) => `  ${r.kind} ${r.version} (${r.arch}, ${r.sha256.slice(0, 12)})`),
  ];
  if (s.waiting) out.push(`  waits: ${s.waiting}`);
  if (s.driver) out.push(`  driven by pid ${s.driver.pid} on ${s.driver.machine} (lease until ${s.driver.expires})`);
  else if (s.state === "running" || s.state === "paused")
    out.push(`  no driver runs it: outpost ctl rollout resume ${s.id}`);
  out.push(...waveTable(s).map((l) => `  ${l}`));
  const shown = s.devices.slice(0, maxDevices);
  for (const d of shown) {
    const why = [d.said && d.said !== d.state ? d.said : undefined, d.code, d.reason].filter(Boolean).join(": ");
    out.push(
      `  ${printable(d.device, 64).padEnd(20)} wave ${d.wave}  ${d.state}${why ? `  ${printable(why, 200)}` : ""}`,
    );
  }
  if (s.devices.length > shown.length) out.push(`  ... ${s.devices.length - shown.length} more (--json lists all)`);
  for (const e of s.events.slice(-5)) out.push(`  ${e.at} ${printable(e.by, 64)}: ${printable(e.what, 200)}`);
  return `${out.join("\n")}\n`;
}
