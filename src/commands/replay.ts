import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { DatabaseSync, type StatementSync } from "node:sqlite";
import { errorMessage, OutpostError } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";

export type ReplayVerdict = "NONCE_REPLAYED" | "REQUEST_REPLAYED" | undefined;

/** How often a guard without its database tries to open it again. */
const REOPEN_MS = 10_000;

/**
 * Remembers every executed request id and nonce until the request expires, in memory and in
 * `state.dir/commands.db`, so that a request runs at most once even across restarts. The row is written with
 * a full fsync before the command runs: a crash after that point costs the command, never a second run.
 * Entries leave when their request has expired, which is why a request's validity is capped.
 *
 * When the records cannot be stored (the file cannot be opened, or a write fails) the guard is not `durable`:
 * the command handler then refuses every command that changes state (fail closed), since a captured request
 * could run again after each restart.
 */
export class ReplayGuard {
  private readonly seen = new Map<string, number>();
  private db: DatabaseSync | undefined;
  private insert: StatementSync | undefined;
  private readonly logger: Logger;
  private readonly dir: string | undefined;
  private lastPrune = 0;
  private lastOpenAttempt = Number.NEGATIVE_INFINITY;
  private writeFailed = false;
  private closed = false;
  private readonly listeners = new Set<(durable: boolean) => void>();

  constructor(options: { dir?: string; logger: Logger; now: number }) {
    this.logger = options.logger;
    this.dir = options.dir;
    if (options.dir !== undefined) this.open(options.now);
  }

  /** Whether a remembered request survives a restart: false means state-changing commands are refused. */
  get durable(): boolean {
    return this.db !== undefined && !this.writeFailed;
  }

  /** `durable`, after trying to open the database again if it is not and the last try is REOPEN_MS old. */
  ensureDurable(now: number): boolean {
    if (this.durable) return true;
    const before = this.durable;
    if (now - this.lastOpenAttempt >= REOPEN_MS) {
      this.db?.close();
      this.db = undefined;
      this.open(now);
    }
    this.notify(before);
    return this.durable;
  }

  /** Calls `listener` whenever `durable` changes. */
  onDurabilityChange(listener: (durable: boolean) => void): void {
    this.listeners.add(listener);
  }

  get size(): number {
    return this.seen.size;
  }

  check(id: string, nonce: string | undefined, now: number): ReplayVerdict {
    this.prune(now);
    if (nonce !== undefined && this.has(`n:${nonce}`, now)) return "NONCE_REPLAYED";
    if (this.has(`i:${id}`, now)) return "REQUEST_REPLAYED";
    return undefined;
  }

  /**
   * Remembers a request in memory, and (`durable`) on disk with an fsync. Throws REPLAY_STORE_UNAVAILABLE when
   * the record could not be stored: a caller about to change state must not go on. A command that changes
   * nothing is remembered in memory only: run again after a restart it gives the same kind of answer, bound
   * to the same request, and the fsync was most of its round trip.
   */
  remember(id: string, nonce: string | undefined, expires: number, now: number, durable = true): void {
    const keys = nonce === undefined ? [`i:${id}`] : [`i:${id}`, `n:${nonce}`];
    for (const key of keys) this.seen.set(key, expires);
    if (!durable) return;
    // One way to retry an unusable store, the same as before a state-changing command is admitted.
    this.ensureDurable(now);
    const before = this.durable;
    const db = this.db;
    if (!db || !this.insert) {
      this.notify(before);
      throw new OutpostError("REPLAY_STORE_UNAVAILABLE", "command replay records cannot be stored");
    }
    try {
      db.exec("BEGIN");
      for (const key of keys) this.insert.run(key, expires);
      db.exec("COMMIT");
      this.writeFailed = false;
    } catch (err) {
      if (db.isOpen && db.isTransaction) db.exec("ROLLBACK");
      this.writeFailed = true;
      this.lastOpenAttempt = now;
      this.notify(before);
      throw new OutpostError("REPLAY_STORE_UNAVAILABLE", `command replay record not stored: ${errorMessage(err)}`, {
        cause: err,
      });
    }
    this.notify(before);
  }

  close(): void {
    this.closed = true;
    this.db?.close();
    this.db = undefined;
  }

  private open(now: number): void {
    if (this.dir === undefined || this.closed) return;
    this.lastOpenAttempt = now;
    let db: DatabaseSync | undefined;
    try {
      mkdirSync(this.dir, { recursive: true });
      db = new DatabaseSync(join(this.dir, "commands.db"));
      db.exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;");
      db.exec("CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, expires INTEGER NOT NULL) WITHOUT ROWID");
      db.prepare("DELETE FROM seen WHERE expires < ?").run(now);
      for (const row of db.prepare("SELECT key, expires FROM seen").all()) {
        const key = String(row.key);
        this.seen.set(key, Math.max(Number(row.expires), this.seen.get(key) ?? 0));
      }
      this.insert = db.prepare("INSERT OR REPLACE INTO seen (key, expires) VALUES (?, ?)");
      this.db = db;
      this.writeFailed = false;
    } catch (err) {
      db?.close();
      this.logger.error(
        { err: errorMessage(err), dir: this.dir },
        "command replay store unavailable; commands that change state are refused until it can be written",
      );
    }
  }

  private notify(before: boolean): void {
    const now = this.durable;
    if (now === before) return;
    for (const listener of this.listeners) {
      try {
        listener(now);
      } catch (err) {
        this.logger.error({ err }, "a replay store listener failed");
      }
    }
  }

  private has(key: string, now: number): boolean {
    const expires = this.seen.get(key);
    return expires !== undefined && expires >= now;
  }

  private prune(now: number): void {
    if (now - this.lastPrune < 10_000) return;
    this.lastPrune = now;
    for (const [key, expires] of this.seen) if (expires < now) this.seen.delete(key);
    try {
      this.db?.prepare("DELETE FROM seen WHERE expires < ?").run(now);
    } catch (err) {
      this.logger.warn({ err }, "could not prune the command replay store");
    }
  }
}
