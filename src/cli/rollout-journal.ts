// A rollout's journal on the operator's machine (issue 26): SQLite (node:sqlite, as the agent's outbox), in WAL
// mode with synchronous=FULL, so that each change is on disk before the driver acts on it. The plan is frozen
// in it at creation; one row per device says where that device stands; a lease says which driver runs it.
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { hostname } from "node:os";
import { dirname } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { z } from "zod";
import { UsageError } from "./host.ts";
import type { RolloutPolicy } from "./rollout-plan.ts";

const SCHEMA = `
CREATE TABLE IF NOT EXISTS rollouts (
  id TEXT PRIMARY KEY, created INTEGER NOT NULL, by TEXT NOT NULL, machine TEXT NOT NULL, broker TEXT NOT NULL,
  prefix TEXT NOT NULL, plan TEXT NOT NULL, state TEXT NOT NULL, reason TEXT, waiting TEXT, updated INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
  rollout TEXT NOT NULL, device TEXT NOT NULL, wave INTEGER NOT NULL, ord INTEGER NOT NULL, state TEXT NOT NULL,
  attempt INTEGER NOT NULL DEFAULT 0, asked INTEGER, first_asked INTEGER, deadline INTEGER, said TEXT,
  code TEXT, reason TEXT, present INTEGER NOT NULL DEFAULT 0, forgiven INTEGER NOT NULL DEFAULT 0,
  updated INTEGER NOT NULL,
  PRIMARY KEY (rollout, device));
CREATE TABLE IF NOT EXISTS waves (
  rollout TEXT NOT NULL, wave INTEGER NOT NULL, started INTEGER, met INTEGER, approved TEXT,
  PRIMARY KEY (rollout, wave));
CREATE TABLE IF NOT EXISTS events (rollout TEXT NOT NULL, at INTEGER NOT NULL, by TEXT NOT NULL, what TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
  rollout TEXT PRIMARY KEY, holder TEXT NOT NULL, pid INTEGER NOT NULL, machine TEXT NOT NULL, expires INTEGER NOT NULL);
`;

/**
 * The journal's layout, in PRAGMA user_version. A journal written by a newer ctl is refused rather than misread;
 * an older one is brought up to this one when opened.
 */
export const JOURNAL_VERSION = 1;

/** A release of the rollout, one per architecture: its signed manifest and the directory it is served from. */
export const planRelease = z.strictObject({
  arch: z.string(),
  kind: z.string(),
  version: z.string(),
  sha256: z.string(),
  dir: z.string(),
  signed: z.unknown(),
});

export const frozenPlan = z.strictObject({
  releases: z.array(planRelease).min(1),
  policy: z.custom<RolloutPolicy>((v) => v !== null && typeof v === "object"),
  waves: z.array(z.array(z.string())),
  /** Where the devices fetch the release: `{mqtt: true}` (this driver serves it) or an HTTP base URL. */
  source: z.union([z.strictObject({ mqtt: z.literal(true) }), z.strictObject({ http: z.string() })]),
  /** How the model release's task is named, for a model rollout. */
  task: z.string().optional(),
});
export type FrozenPlan = z.output<typeof frozenPlan>;

/** Where a device stands in a rollout. `asked`: the request is (about to be) out; `updating`: it said so. */
export type DeviceState = "pending" | "asked" | "updating" | "committed" | "rolled-back" | "failed" | "timed-out";
export const FINISHED: ReadonlySet<string> = new Set(["committed", "rolled-back", "failed", "timed-out"]);
export const FAILED: ReadonlySet<string> = new Set(["rolled-back", "failed", "timed-out"]);
export const IN_FLIGHT: ReadonlySet<string> = new Set(["asked", "updating"]);

export interface DeviceRow {
  device: string;
  wave: number;
  ord: number;
  state: DeviceState;
  attempt: number;
  asked: number | null;
  first_asked: number | null;
  deadline: number | null;
  said: string | null;
  code: string | null;
  reason: string | null;
  present: number;
  /**
   * A failure an operator accepted by resuming after a pause: left out of the wave's pause and pass rules
   * (written by `resume` only; the driver reads it each turn and never writes it).
   */
  forgiven: number;
}

export interface RolloutRow {
  id: string;
  created: number;
  by: string;
  machine: string;
  broker: string;
  prefix: string;
  plan: string;
  state: "running" | "paused" | "aborted" | "completed";
  reason: string | null;
  waiting: string | null;
  updated: number;
}

export interface WaveRow {
  wave: number;
  started: number | null;
  met: number | null;
  approved: string | null;
}

/** This machine, as a rollout is bound to it: systemd's machine id, else the host name. */
export function machineId(): string {
  try {
    const id = readFileSync("/etc/machine-id", "utf8").trim();
    if (/^[0-9a-f]{32}$/.test(id)) return `${hostname()}/${id.slice(0, 12)}`;
  } catch {
    // No machine id (a container): the host name alone.
  }
  return hostname();
}

/** A new rollout's id: the date, for humans, and randomness, so that two operators never pick the same. */
export function newRolloutId(now: number): string {
  const day = new Date(now).toISOString().slice(0, 10).replaceAll("-", "");
  return `ro-${day}-${randomBytes(4).toString("hex")}`;
}

/**
 * The id of a device's `attempt`-th request in a rollout: derived, so that a driver started again knows every
 * id its predecessors used, and a device's states naming any of them are this rollout's.
 */
export function requestIdOf(rollout: string, device: string, attempt: number): string {
  const h = createHash("sha256").update(`${rollout}\n${device}\n${attempt}`).digest("hex");
  return `${rollout}.${h.slice(0, 20)}`;
}

export interface WaveCounts {
  total: number;
  pending: number;
  offline: number;
  inFlight: number;
  committed: number;
  rolledBack: number;
  failed: number;
  timedOut: number;
  /** The wave's devices that can be judged: all but those pending while offline. */
  reachable: number;
  finished: number;
  failures: number;
  /** Failures an operator accepted by resuming (not judged again). */
  forgiven: number;
}

export function waveCounts(rows: Iterable<DeviceRow>): WaveCounts {
  const c: WaveCounts = {
    total: 0,
    pending: 0,
    offline: 0,
    inFlight: 0,
    committed: 0,
    rolledBack: 0,
    failed: 0,
    timedOut: 0,
    reachable: 0,
    finished: 0,
    failures: 0,
    forgiven: 0,
  };
  for (const d of rows) {
    c.total++;
    if (d.state === "pending") {
      if (d.present) c.pending++;
      else c.offline++;
    } else if (IN_FLIGHT.has(d.state)) c.inFlight++;
    else if (d.state === "committed") c.committed++;
    else if (d.state === "rolled-back") c.rolledBack++;
    else if (d.state === "failed") c.failed++;
    else if (d.state === "timed-out") c.timedOut++;
    // An accepted failure is shown, but judged no more: neither reachable, nor finished, nor failed.
    if (d.forgiven && FAILED.has(d.state)) {
      c.forgiven++;
      continue;
    }
    if (FINISHED.has(d.state)) c.finished++;
    if (FAILED.has(d.state)) c.failures++;
  }
  c.reachable = c.total - c.offline - c.forgiven;
  return c;
}

export class RolloutJournal {
  readonly db: DatabaseSync;

  constructor(path: string) {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    this.db = new DatabaseSync(path);
    // FULL: a commit is on disk before the request it records goes out (written before it is acted on).
    this.db.exec("PRAGMA busy_timeout = 5000;");
    const version = Number(Object.values(this.db.prepare("PRAGMA user_version").get() ?? {})[0] ?? 0);
    if (version > JOURNAL_VERSION) {
      this.db.close();
      // Read by an older ctl, a newer journal could be misread and acted on: nothing is touched.
      throw new UsageError(
        `${path}: a rollout journal of version ${version}, written by a newer ctl (this one knows up to ${JOURNAL_VERSION}): use that ctl`,
      );
    }
    this.db.exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;");
    this.tx(() => {
      this.db.exec(SCHEMA);
      // Version 0: new, or made before journals had a version (the same tables). Later versions add a step here.
      if (version < JOURNAL_VERSION) this.db.exec(`PRAGMA user_version = ${JOURNAL_VERSION}`);
    });
  }

  close(): void {
    this.db.close();
  }

  /** Runs `fn` in one transaction that takes the write lock at once (two ctl processes never interleave). */
  tx<T>(fn: () => T): T {
    this.db.exec("BEGIN IMMEDIATE");
    try {
      const out = fn();
      this.db.exec("COMMIT");
      return out;
    } catch (err) {
      this.db.exec("ROLLBACK");
      throw err;
    }
  }

  create(r: Omit<RolloutRow, "plan" | "state" | "reason" | "waiting" | "updated">, plan: FrozenPlan): void {
    this.tx(() => {
      this.db
        .prepare(
          "INSERT INTO rollouts (id, created, by, machine, broker, prefix, plan, state, updated) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?)",
        )
        .run(r.id, r.created, r.by, r.machine, r.broker, r.prefix, JSON.stringify(plan), r.created);
      const insert = this.db.prepare(
        "INSERT INTO devices (rollout, device, wave, ord, state, updated) VALUES (?, ?, ?, ?, 'pending', ?)",
      );
      let ord = 0;
      for (const [wave, devices] of plan.waves.entries()) {
        for (const d of devices) insert.run(r.id, d, wave, ord++, r.created);
        this.db.prepare("INSERT INTO waves (rollout, wave) VALUES (?, ?)").run(r.id, wave);
      }
      this.event(r.id, r.created, r.by, `created: ${ord} devices in ${plan.waves.length} waves`);
    });
  }

  rollout(id: string): RolloutRow | undefined {
    return this.db.prepare("SELECT * FROM rollouts WHERE id = ?").get(id) as RolloutRow | undefined;
  }

  list(): RolloutRow[] {
    return this.db.prepare("SELECT * FROM rollouts ORDER BY created").all() as unknown as RolloutRow[];
  }

  plan(r: RolloutRow): FrozenPlan {
    return frozenPlan.parse(JSON.parse(r.plan));
  }

  devices(id: string): DeviceRow[] {
    return this.db
      .prepare(
        "SELECT device, wave, ord, state, attempt, asked, first_asked, deadline, said, code, reason, present, forgiven FROM devices WHERE rollout = ? ORDER BY ord",
      )
      .all(id) as unknown as DeviceRow[];
  }

  waves(id: string): WaveRow[] {
    return this.db
      .prepare("SELECT wave, started, met, approved FROM waves WHERE rollout = ? ORDER BY wave")
      .all(id) as unknown as WaveRow[];
  }

  events(id: string): { at: number; by: string; what: string }[] {
    return this.db.prepare("SELECT at, by, what FROM events WHERE rollout = ? ORDER BY rowid").all(id) as unknown as {
      at: number;
      by: string;
      what: string;
    }[];
  }

  event(id: string, at: number, by: string, what: string): void {
    this.db.prepare("INSERT INTO events (rollout, at, by, what) VALUES (?, ?, ?, ?)").run(id, at, by, what);
  }

  /** A device's row changed: written (and synced) before whatever it records is done. */
  saveDevice(id: string, d: DeviceRow, now: number): void {
    this.db
      .prepare(
        "UPDATE devices SET state = ?, attempt = ?, asked = ?, first_asked = ?, deadline = ?, said = ?, code = ?, reason = ?, present = ?, updated = ? WHERE rollout = ? AND device = ?",
      )
      .run(
        d.state,
        d.attempt,
        d.asked,
        d.first_asked,
        d.deadline,
        d.said,
        d.code,
        d.reason,
        d.present,
        now,
        id,
        d.device,
      );
  }

  /** The driver's columns of a wave (an operator's approval is never written back over). */
  saveWave(id: string, w: WaveRow): void {
    this.db
      .prepare("UPDATE waves SET started = ?, met = ? WHERE rollout = ? AND wave = ?")
      .run(w.started, w.met, id, w.wave);
  }

  approve(id: string, wave: number, by: string, now: number): void {
    this.tx(() => {
      this.db.prepare("UPDATE waves SET approved = ? WHERE rollout = ? AND wave = ?").run(by, id, wave);
      this.event(id, now, by, `approved wave ${wave + 1}`);
    });
  }

  /** The devices whose failures an operator accepted (resume after a pause). */
  forgivenDevices(id: string): Set<string> {
    const rows = this.db.prepare("SELECT device FROM devices WHERE rollout = ? AND forgiven = 1").all(id);
    return new Set(rows.map((r) => String(r.device)));
  }

  /** Accepts the failures so far of the started waves: `resume` after a pause; returns how many. */
  forgive(id: string, by: string, now: number): number {
    return this.tx(() => {
      const r = this.db
        .prepare(
          `UPDATE devices SET forgiven = 1 WHERE rollout = ? AND forgiven = 0 AND state IN ('rolled-back', 'failed', 'timed-out') AND wave IN (SELECT wave FROM waves WHERE rollout = ? AND started IS NOT NULL)`,
        )
        .run(id, id);
      const n = Number(r.changes);
      if (n > 0) this.event(id, now, by, `accepted ${n} failures`);
      return n;
    });
  }

  /** The rollout's state, with who changed it and why; `from`: only from these states (else false). */
  setState(
    id: string,
    state: RolloutRow["state"],
    o: { by: string; reason?: string; now: number; from?: readonly RolloutRow["state"][] },
  ): boolean {
    return this.tx(() => {
      const r = this.rollout(id);
      if (!r || (o.from && !o.from.includes(r.state))) return false;
      this.db
        .prepare("UPDATE rollouts SET state = ?, reason = ?, updated = ? WHERE id = ?")
        .run(state, o.reason ?? null, o.now, id);
      this.event(id, o.now, o.by, `${state}${o.reason ? `: ${o.reason}` : ""}`);
      return true;
    });
  }

  setWaiting(id: string, waiting: string | null): void {
    this.db.prepare("UPDATE rollouts SET waiting = ? WHERE id = ?").run(waiting, id);
  }

  /**
   * Takes or renews the rollout's lease for `holder` until `expires`. Refused (the holder named) while another
   * driver holds it: on this machine, as long as its process lives; from another machine, until it expires.
   */
  lease(
    id: string,
    me: { holder: string; pid: number; machine: string },
    now: number,
    expires: number,
    alive: (pid: number) => boolean,
  ): { ok: true } | { ok: false; holder: string; pid: number; machine: string } {
    return this.tx(() => {
      const l = this.leaseOf(id);
      if (l && l.holder !== me.holder) {
        const held = l.machine === me.machine ? alive(l.pid) : l.expires > now;
        if (held) return { ok: false, holder: l.holder, pid: l.pid, machine: l.machine };
      }
      this.db
        .prepare(
          "INSERT INTO leases (rollout, holder, pid, machine, expires) VALUES (?, ?, ?, ?, ?) ON CONFLICT (rollout) DO UPDATE SET holder = excluded.holder, pid = excluded.pid, machine = excluded.machine, expires = excluded.expires",
        )
        .run(id, me.holder, me.pid, me.machine, expires);
      return { ok: true } as const;
    });
  }

  leaseOf(id: string): { holder: string; pid: number; machine: string; expires: number } | undefined {
    return this.db.prepare("SELECT holder, pid, machine, expires FROM leases WHERE rollout = ?").get(id) as
      | { holder: string; pid: number; machine: string; expires: number }
      | undefined;
  }

  release(id: string, holder: string): void {
    this.db.prepare("DELETE FROM leases WHERE rollout = ? AND holder = ?").run(id, holder);
  }
}
