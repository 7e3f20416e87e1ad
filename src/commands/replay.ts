import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { DatabaseSync, type StatementSync } from "node:sqlite";
import type { Logger } from "../core/logger.ts";

export type ReplayVerdict = "NONCE_REPLAYED" | "REQUEST_REPLAYED" | undefined;

/**
 * Remembers every executed request id and nonce until the request expires, in memory and in
 * `state.dir/commands.db`, so that a request runs at most once even across restarts. The row is written with
 * a full fsync before the command runs: a crash after that point costs the command, never a second run.
 * Entries leave when their request has expired, which is why a request's validity is capped.
 */
export class ReplayGuard {
  private readonly seen = new Map<string, number>();
  private db: DatabaseSync | undefined;
  private insert: StatementSync | undefined;
  private readonly logger: Logger;
  private lastPrune = 0;

  constructor(options: { dir?: string; logger: Logger; now: number }) {
    this.logger = options.logger;
    if (options.dir === undefined) return;
    try {
      mkdirSync(options.dir, { recursive: true });
      const db = new DatabaseSync(join(options.dir, "commands.db"));
      db.exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;");
      db.exec("CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, expires INTEGER NOT NULL) WITHOUT ROWID");
      db.prepare("DELETE FROM seen WHERE expires < ?").run(options.now);
      for (const row of db.prepare("SELECT key, expires FROM seen").all()) {
        this.seen.set(String(row.key), Number(row.expires));
      }
      this.insert = db.prepare("INSERT OR REPLACE INTO seen (key, expires) VALUES (?, ?)");
      this.db = db;
    } catch (err) {
      // Without the file the guard still holds for this process; a restart could then run a request again.
      this.logger.error({ err }, "command replay store unavailable; replay protection is in memory only");
    }
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

  remember(id: string, nonce: string | undefined, expires: number): void {
    const keys = nonce === undefined ? [`i:${id}`] : [`i:${id}`, `n:${nonce}`];
    for (const key of keys) this.seen.set(key, expires);
    if (!this.db || !this.insert) return;
    try {
      this.db.exec("BEGIN");
      for (const key of keys) this.insert.run(key, expires);
      this.db.exec("COMMIT");
    } catch (err) {
      if (this.db.isTransaction) this.db.exec("ROLLBACK");
      this.logger.error({ err }, "could not store a command id; it is remembered in memory only");
    }
  }

  close(): void {
    this.db?.close();
    this.db = undefined;
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
