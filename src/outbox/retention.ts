import { FETCH } from "./acks.ts";
import type { Ledger } from "./classes.ts";
import type { OutboxStore } from "./store.ts";
import { CLASSES, type DropReason, PRIORITIES, type Priority } from "./types.ts";

/** Expiry scans by age: once a minute is plenty for a TTL of hours or days. */
const EXPIRY_EVERY_MS = 60_000;

/**
 * The outbox's bounds: `maxBytes` (over it the lowest class goes first, oldest first) and `ttl` (older
 * messages go). Every message dropped is counted by class and reason.
 */
export class Retention {
  readonly dropped = Object.fromEntries(PRIORITIES.map((p) => [p, { overflow: 0, expired: 0 }])) as Record<
    Priority,
    Record<DropReason, number>
  >;
  private readonly ledger: Ledger;
  private readonly maxBytes: number;
  private readonly ttlMs: number;
  private lastExpiry = Number.NEGATIVE_INFINITY;

  constructor(ledger: Ledger, bounds: { maxBytes: number; ttlMs: number }) {
    this.ledger = ledger;
    this.maxBytes = bounds.maxBytes;
    this.ttlMs = bounds.ttlMs;
  }

  over(): boolean {
    return this.ledger.total() > this.maxBytes;
  }

  /** Without a database memory is all there is: drops the oldest of the lowest class until within bounds. */
  enforceInMemory(): void {
    while (this.ledger.freshBytes > this.maxBytes && this.dropFresh("overflow")) {}
  }

  /** Drops stored messages (then in-memory ones) of the lowest classes until within bounds. */
  enforce(store: OutboxStore): void {
    while (this.over() && this.dropStored(store)) {}
  }

  /** Drops in-memory messages older than the ttl. */
  expireFresh(now: number): void {
    const before = now - this.ttlMs;
    for (const [p, c] of this.ledger.classes.entries()) {
      while (c.fresh.length > 0 && (c.fresh.peek()?.created ?? now) < before) {
        const entry = c.fresh.shift();
        if (!entry) break;
        this.ledger.freshBytes -= entry.bytes;
        this.count(p, "expired");
      }
    }
  }

  /** Drops stored messages older than the ttl, at most once a minute (or after the clock went back). */
  expireStored(now: number, store: OutboxStore): void {
    if (now - this.lastExpiry < EXPIRY_EVERY_MS && now >= this.lastExpiry) return;
    this.lastExpiry = now;
    const before = now - this.ttlMs;
    const marks = this.ledger.classes.map((c) => c.mark);
    for (const row of store.expire(before, [...this.ledger.inflightIds.keys()], marks)) this.forget(row, "expired");
  }

  private count(priority: number, reason: DropReason): void {
    const name = PRIORITIES[priority];
    if (name) this.dropped[name][reason] += 1;
  }

  private forget(row: { id: number; priority: number; bytes: number }, reason: DropReason): void {
    this.ledger.release(row);
    const buffer = this.ledger.at(row.priority).buffer;
    const at = buffer.findIndex((e) => e.id === row.id);
    if (at >= 0) buffer.splice(at, 1);
    this.count(row.priority, reason);
  }

  /** Drops stored messages of the lowest class that has any; false when none is left. */
  private dropStored(store: OutboxStore): boolean {
    const ledger = this.ledger;
    for (let p = CLASSES - 1; p >= 0; p--) {
      const c = ledger.at(p);
      if (c.storedCount === 0) continue;
      const excess = ledger.total() - this.maxBytes;
      const average = ledger.storedBytes / Math.max(1, ledger.storedTotal());
      const count = Math.max(1, Math.min(FETCH, Math.ceil(excess / Math.max(1, average))));
      for (const row of store.dropOldest(p, count, [...ledger.inflightIds.keys()], c.mark)) {
        this.forget({ ...row, priority: p }, "overflow");
      }
      return true;
    }
    return this.dropFresh("overflow");
  }

  /** Drops the oldest in-memory message of the lowest class that has one. */
  private dropFresh(reason: DropReason): boolean {
    for (let p = CLASSES - 1; p >= 0; p--) {
      const entry = this.ledger.at(p).fresh.shift();
      if (!entry) continue;
      this.ledger.freshBytes -= entry.bytes;
      this.count(p, reason);
      return true;
    }
    return false;
  }
}
