import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { DatabaseSync, type StatementSync } from "node:sqlite";
import { OutpostError } from "../core/errors.ts";

import { SCHEMA, SCHEMA_VERSION, storageError } from "./store-schema.ts";

export { isCorrupt } from "./store-schema.ts";

/** One stored message: what the outbox needs to send it again after a restart. */
export interface StoredMessage {
  id: number;
  session: string;
  seq: number;
  priority: number;
  topic: string;
  payload: string;
  /** JSON of MQTT 5 publish properties (response topic, correlation data), if any. */
  props: string | null;
  bytes: number;
  created: number;
}

export type NewMessage = Omit<StoredMessage, "id">;

/** A stored message read back for a resend: what publishing it needs. */
export type FetchedMessage = Pick<StoredMessage, "id" | "seq" | "priority" | "topic" | "payload" | "props" | "bytes">;

const REPLAYED = '{"replayed":true,';

/** The payload as a replay: `{"replayed":true,` in front of the envelope's other fields. */
export function replayed(payload: string): string {
  return payload.startsWith(REPLAYED) ? payload : `${REPLAYED}${payload.slice(1)}`;
}

/** What opening the database found that the outbox must report. */
export interface OpenReport {
  /** Rows at or below their class's mark in a database from before SCHEMA_VERSION: sent again, not deleted. */
  rescued: number;
  /** Acknowledged rows below the marks deleted at open (normal after a stop during a drain). */
  purged: number;
}

/** Dead letters kept for inspection; older ones make room. */
const DEAD_LETTER_LIMIT = 1000;

/**
 * The outbox's durable half: SQLite in WAL mode through node:sqlite (no native addon, any arch).
 * Inserts are committed with synchronous=FULL (an fsync of the WAL: they are the durability promise);
 * deletes of acknowledged messages with synchronous=NORMAL (no fsync: losing one to a power cut only
 * means a duplicate, and the OS keeps them across a crash of the process).
 */
export class OutboxStore {
  private readonly db: DatabaseSync;
  private readonly stmts: {
    insert: StatementSync;
    highWater: StatementSync;
    remove: StatementSync;
    removeRange: StatementSync;
    mark: StatementSync;
    marks: StatementSync;
    purge: StatementSync;
    fetch: StatementSync;
    dropOldest: StatementSync;
    expire: StatementSync;
    deadFromRow: StatementSync;
    deadInsert: StatementSync;
    deadTrim: StatementSync;
    totals: StatementSync;
  };
  private synchronous: "FULL" | "NORMAL" | undefined;
  /** The highest id ever assigned in this database (persisted in meta): the next insert goes above it. */
  private highWater = 0;
  /** The marks as last written, to check every new id against. */
  private readonly markCache = new Map<number, number>();
  fsyncCommits = 0;
  readonly report: OpenReport = { rescued: 0, purged: 0 };

  /** `minId`: ids start above it (a database recreated while in-flight acks of the old one may still arrive). */
  constructor(path: string, minId = 0) {
    try {
      mkdirSync(dirname(path), { recursive: true });
      this.db = new DatabaseSync(path);
      // A larger auto-checkpoint means fewer checkpoints, each of which syncs: kinder to flash, faster to drain.
      this.db.exec(
        "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 1000; PRAGMA wal_autocheckpoint = 4000; PRAGMA journal_size_limit = 16777216;",
      );
      this.db.exec(SCHEMA);
    } catch (err) {
      throw storageError(err, `cannot open the outbox database ${path}`);
    }
    const db = this.db;
    this.stmts = {
      insert: db.prepare(
        "INSERT INTO messages (id, session, seq, priority, topic, payload, props, bytes, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
      ),
      highWater: db.prepare(
        "INSERT INTO meta (key, value) VALUES ('high_water', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
      ),
      remove: db.prepare("DELETE FROM messages WHERE id = ?"),
      removeRange: db.prepare("DELETE FROM messages WHERE id BETWEEN ? AND ?"),
      mark: db.prepare(
        "INSERT INTO marks (priority, acked) VALUES (?, ?) ON CONFLICT (priority) DO UPDATE SET acked = excluded.acked",
      ),
      marks: db.prepare("SELECT priority, acked FROM marks"),
      purge: db.prepare("DELETE FROM messages WHERE priority = ? AND id <= ?"),
      // Only what a resend needs, as arrays: building a named object per row cost more than reading it.
      fetch: db.prepare(
        "SELECT id, seq, topic, payload, props, bytes FROM messages WHERE priority = ? AND id > ? ORDER BY id LIMIT ?",
      ),
      dropOldest: db.prepare(
        "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE priority = ? AND id > ? AND id NOT IN (SELECT value FROM json_each(?)) ORDER BY id LIMIT ?) RETURNING id, bytes",
      ),
      // The rows of a class before its first unexpired one: a prefix in id order, found without an index on
      // created. (After the clock jumps back, a row waits until the rows before it have expired too.)
      expire: db.prepare(
        "DELETE FROM messages WHERE priority = ?1 AND id > ?4 AND id < coalesce((SELECT id FROM messages WHERE priority = ?1 AND id > ?4 AND created >= ?2 ORDER BY id LIMIT 1), 9223372036854775807) AND id NOT IN (SELECT value FROM json_each(?3)) RETURNING id, priority, bytes",
      ),
      deadFromRow: db.prepare(
        "INSERT INTO dead_letters (session, seq, topic, payload, bytes, reason, created, dead_at) SELECT session, seq, topic, payload, bytes, ?, created, ? FROM messages WHERE id = ?",
      ),
      deadInsert: db.prepare(
        "INSERT INTO dead_letters (session, seq, topic, payload, bytes, reason, created, dead_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
      ),
      deadTrim: db.prepare("DELETE FROM dead_letters WHERE id <= (SELECT max(id) FROM dead_letters) - ?"),
      totals: db.prepare(
        "SELECT m.priority AS priority, count(*) AS n, coalesce(sum(m.bytes), 0) AS bytes FROM messages m LEFT JOIN marks k ON k.priority = m.priority WHERE m.id > coalesce(k.acked, 0) GROUP BY m.priority",
      ),
    };
    this.stmts.fetch.setReturnArrays(true);
    try {
      this.prepareIds(minId);
    } catch (err) {
      this.close();
      throw storageError(err, `cannot open the outbox database ${path}`);
    }
  }

  /**
   * Finds the high-water mark, upgrades a database from before it, and deletes the acknowledged rows below the
   * marks. Before SCHEMA_VERSION, ids were reused once the table had been emptied, so a row at or below its
   * class's mark may never have been sent: such rows are sent again (duplicates at worst) instead of deleted.
   */
  private prepareIds(minId: number): void {
    const db = this.db;
    const scalar = (sql: string) => Number(Object.values(db.prepare(sql).get() ?? {})[0] ?? 0);
    const version = scalar("PRAGMA user_version");
    const marks = this.marks();
    this.highWater = Math.max(
      minId,
      scalar("SELECT value FROM meta WHERE key = 'high_water'"),
      scalar("SELECT max(id) FROM messages"),
      ...marks.values(),
    );
    // No fsync: if this is lost, the next open does it again.
    this.transaction("NORMAL", () => {
      if (version < SCHEMA_VERSION) {
        for (const [priority, mark] of marks) {
          const below = db.prepare("SELECT count(*) AS n FROM messages WHERE priority = ? AND id <= ?");
          const n = Number((below.get(priority, mark) as { n: number }).n);
          if (n > 0) db.prepare("DELETE FROM marks WHERE priority = ?").run(priority);
          this.report.rescued += n;
        }
        db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
      } else {
        for (const [priority, mark] of marks) {
          this.report.purged += Number(this.stmts.purge.run(priority, mark).changes);
        }
      }
      this.stmts.highWater.run(this.highWater);
    });
    for (const [priority, mark] of this.marks()) this.markCache.set(priority, mark);
  }

  /**
   * Inserts in one fsynced transaction; returns the new row ids in order. A stored message is only ever sent
   * again as a replay, so its payload is stored with the `replayed` flag already in it.
   */
  insert(messages: readonly NewMessage[]): number[] {
    let next = this.highWater;
    const ids = this.transaction("FULL", () => {
      const ids = messages.map((m) => {
        next += 1;
        // Cannot happen while ids only grow; if it ever does, refuse rather than store an unfetchable row.
        const mark = this.markCache.get(m.priority) ?? 0;
        if (next <= mark) {
          throw new OutpostError("OUTBOX_INVARIANT", `new id ${next} is not above the acknowledged mark ${mark}`);
        }
        const payload = replayed(m.payload);
        this.stmts.insert.run(next, m.session, m.seq, m.priority, m.topic, payload, m.props, m.bytes, m.created);
        return next;
      });
      this.stmts.highWater.run(next);
      return ids;
    });
    this.highWater = next;
    return ids;
  }

  /** The highest id assigned so far. */
  get maxId(): number {
    return this.highWater;
  }

  /** The acknowledged-through mark of each class that has one. */
  marks(): Map<number, number> {
    const rows = this.stmts.marks.all() as unknown as { priority: number; acked: number }[];
    return new Map(rows.map((r) => [Number(r.priority), Number(r.acked)]));
  }

  /**
   * Records acknowledgements without an fsync: new marks (every row of the class up to the mark is
   * acknowledged) and single rows outside the marks, deleted at once.
   */
  acknowledge(marks: ReadonlyMap<number, number>, ids: readonly number[]): void {
    if (marks.size === 0 && ids.length === 0) return;
    this.transaction("NORMAL", () => {
      for (const [priority, acked] of marks) this.stmts.mark.run(priority, acked);
      this.removeIds(ids);
    });
    for (const [priority, acked] of marks) this.markCache.set(priority, acked);
  }

  /** Deletes the rows of a class at or below its mark, in one statement. */
  purge(priority: number, upTo: number): void {
    this.transaction("NORMAL", () => this.stmts.purge.run(priority, upTo));
  }

  private removeIds(ids: readonly number[]): void {
    if (ids.length === 0) return;
    // Acknowledgements come mostly in id order: delete runs of consecutive ids with one statement each.
    const sorted = isSorted(ids) ? ids : [...ids].sort((a, b) => a - b);
    {
      let start = sorted[0] ?? 0;
      let end = start;
      for (let i = 1; i <= sorted.length; i++) {
        const id = sorted[i];
        if (id === end + 1) {
          end = id;
          continue;
        }
        if (start === end) this.stmts.remove.run(start);
        else this.stmts.removeRange.run(start, end);
        if (id !== undefined) {
          start = id;
          end = id;
        }
      }
    }
  }

  /** Up to `limit` rows of one class with id above `afterId`, oldest first, payloads flagged `replayed`. */
  fetch(priority: number, afterId: number, limit: number): FetchedMessage[] {
    let rows: unknown[][];
    try {
      rows = this.stmts.fetch.all(priority, afterId, limit) as unknown as unknown[][];
    } catch (err) {
      throw storageError(err, "cannot read the outbox");
    }
    return rows.map(([id, seq, topic, payload, props, bytes]) => ({
      id: Number(id),
      seq: Number(seq),
      priority,
      topic: String(topic),
      // Rows written before payloads were stored flagged get the flag now.
      payload: replayed(String(payload)),
      props: props === null ? null : String(props),
      bytes: Number(bytes),
    }));
  }

  /** Deletes the `count` oldest rows of a class above its mark, except those in flight; returns what went. */
  dropOldest(priority: number, count: number, keep: readonly number[], mark: number): { id: number; bytes: number }[] {
    const rows = () => this.stmts.dropOldest.all(priority, mark, JSON.stringify(keep), count);
    return this.transaction("NORMAL", rows) as unknown as { id: number; bytes: number }[];
  }

  /** Deletes rows created before `before` (epoch ms) above each class's mark, except those in flight. */
  expire(
    before: number,
    keep: readonly number[],
    marks: readonly number[],
  ): { id: number; priority: number; bytes: number }[] {
    const kept = JSON.stringify(keep);
    return this.transaction("NORMAL", () => {
      const gone: { id: number; priority: number; bytes: number }[] = [];
      for (const [p, mark] of marks.entries()) {
        const rows = this.stmts.expire.all(p, before, kept, mark) as unknown as {
          id: number;
          priority: number;
          bytes: number;
        }[];
        gone.push(...rows);
      }
      return gone;
    });
  }

  /** Moves a stored row, or records an unstored message, to the dead letters. */
  deadLetter(
    message: Pick<StoredMessage, "seq" | "topic" | "payload" | "bytes"> & {
      id?: number;
      session?: string;
      created?: number;
    },
    reason: string,
    now: number,
  ): void {
    this.transaction("FULL", () => {
      if (message.id !== undefined) {
        this.stmts.deadFromRow.run(reason, now, message.id);
        this.stmts.remove.run(message.id);
      } else {
        const m = message;
        this.stmts.deadInsert.run(m.session ?? "", m.seq, m.topic, m.payload, m.bytes, reason, m.created ?? now, now);
      }
      this.stmts.deadTrim.run(DEAD_LETTER_LIMIT);
    });
  }

  /** Every row not yet acknowledged, oldest first per class: what a recreated database must hold again. */
  pending(): NewMessage[] {
    const rows = this.db
      .prepare(
        "SELECT m.session, m.seq, m.priority, m.topic, m.payload, m.props, m.bytes, m.created FROM messages m LEFT JOIN marks k ON k.priority = m.priority WHERE m.id > coalesce(k.acked, 0) ORDER BY m.id",
      )
      .all() as unknown as NewMessage[];
    return rows.map((r) => ({ ...r, seq: Number(r.seq), priority: Number(r.priority), bytes: Number(r.bytes) }));
  }

  /** Count and bytes per class: what a restart finds. */
  totals(): Map<number, { count: number; bytes: number }> {
    const rows = this.stmts.totals.all() as unknown as { priority: number; n: number; bytes: number }[];
    return new Map(rows.map((r) => [r.priority, { count: Number(r.n), bytes: Number(r.bytes) }]));
  }

  close(): void {
    try {
      this.db.close();
    } catch {
      // already closed
    }
  }

  private transaction<T>(synchronous: "FULL" | "NORMAL", fn: () => T): T {
    try {
      if (this.synchronous !== synchronous) {
        this.db.exec(`PRAGMA synchronous = ${synchronous}`);
        this.synchronous = synchronous;
      }
      this.db.exec("BEGIN IMMEDIATE");
      try {
        const result = fn();
        this.db.exec("COMMIT");
        if (synchronous === "FULL") this.fsyncCommits += 1;
        return result;
      } catch (err) {
        if (this.db.isTransaction) this.db.exec("ROLLBACK");
        throw err;
      }
    } catch (err) {
      throw storageError(err, "outbox write failed");
    }
  }
}

function isSorted(ids: readonly number[]): boolean {
  for (let i = 1; i < ids.length; i++) if ((ids[i] ?? 0) < (ids[i - 1] ?? 0)) return false;
  return true;
}
