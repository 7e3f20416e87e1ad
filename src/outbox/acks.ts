import type { Ledger } from "./classes.ts";
import type { OutboxStore } from "./store.ts";

/** Fetched per refill; also how many unrecorded acknowledgements force a recording at once (x 4). */
export const FETCH = 512;
const DELETE_SPACING_MS = 10;
const PURGE_ROWS = 4096;

export interface AckDeps {
  store(): OutboxStore | undefined;
  /** True while a failed send waits for its rewind: the rows after it are not all acknowledged. */
  rewinding(): boolean;
  storageFailed(err: unknown): void;
  /** The monotonic clock (ms): the outbox's. */
  now(): number;
}

/**
 * Acknowledgement bookkeeping of stored messages. PUBACKs are collected and recorded at most every
 * DELETE_SPACING_MS: per class, the mark moves up to just below the oldest stored row not yet acknowledged
 * (one small update instead of a delete per message); acknowledged rows above it (stored while in flight, or
 * acknowledged out of order) are deleted one by one; rows below a mark are deleted in bulk.
 */
export class Acknowledgements {
  private readonly ledger: Ledger;
  private readonly deps: AckDeps;
  private count = 0;
  private scheduled = false;
  private last = Number.NEGATIVE_INFINITY;

  constructor(ledger: Ledger, deps: AckDeps) {
    this.ledger = ledger;
    this.deps = deps;
  }

  /** A stored message was acknowledged by the broker. */
  record(priority: number, id: number): void {
    this.ledger.at(priority).acked.push(id);
    this.count += 1;
    if (this.count >= 4 * FETCH) {
      this.flush();
      return;
    }
    if (this.scheduled) return;
    this.scheduled = true;
    // At most one transaction per DELETE_SPACING_MS: while a backlog drains, acks arrive a few per event-loop
    // turn and a transaction each would halve the drain rate. A crash can then repeat the in-flight window
    // plus these few milliseconds of acknowledged messages.
    const wait = Math.max(0, this.last + DELETE_SPACING_MS - this.deps.now());
    const run = () => {
      this.scheduled = false;
      this.flush();
    };
    if (wait === 0) setImmediate(run);
    else setTimeout(run, wait);
  }

  /** Whether acknowledged rows above `after` wait to be recorded (a refill must not fetch them again). */
  pendingAbove(priority: number, after: number): boolean {
    return this.ledger.at(priority).acked.some((id) => id > after);
  }

  /** Drops what was not recorded (the store it belonged to is gone). */
  reset(): void {
    for (const c of this.ledger.classes) c.acked = [];
    this.count = 0;
  }

  /** Records every acknowledgement collected so far. */
  flush(): void {
    const store = this.deps.store();
    if (this.count === 0 || !store) return;
    this.last = this.deps.now();
    const classes = this.ledger.classes;
    const marks = new Map<number, number>();
    const single: number[] = [];
    const covered = new Array<number>(classes.length).fill(0);
    const rewinding = this.deps.rewinding();
    for (const [p, c] of classes.entries()) {
      const ids = c.acked;
      if (ids.length === 0) continue;
      c.acked = [];
      const mark = Math.max(c.mark, rewinding ? 0 : this.watermark(p));
      if (mark > c.mark) marks.set(p, mark);
      for (const id of ids) {
        if (id > mark) single.push(id);
        else covered[p] = (covered[p] ?? 0) + 1;
      }
    }
    this.count = 0;
    try {
      store.acknowledge(marks, single);
      for (const [p, mark] of marks) this.ledger.at(p).mark = mark;
      for (const [p, c] of classes.entries()) {
        c.unpurged += covered[p] ?? 0;
        if (c.unpurged >= PURGE_ROWS || (c.unpurged > 0 && c.storedCount === 0)) {
          store.purge(p, c.mark);
          c.unpurged = 0;
        }
      }
    } catch (err) {
      this.deps.storageFailed(err);
    }
  }

  /**
   * The highest id up to which every stored row of a class is acknowledged or gone: below the cursor (all
   * fetched), below the first buffered row and below every stored row in flight.
   */
  private watermark(p: number): number {
    const c = this.ledger.at(p);
    let mark = c.cursor;
    const buffered = c.buffer[0]?.id;
    if (buffered !== undefined) mark = Math.min(mark, buffered - 1);
    for (const [id, priority] of this.ledger.inflightIds) if (priority === p) mark = Math.min(mark, id - 1);
    return mark;
  }
}
