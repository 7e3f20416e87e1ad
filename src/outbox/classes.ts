import { Queue } from "./queue.ts";
import { CLASSES, type Entry } from "./types.ts";

/** Everything the outbox knows about one delivery class (priority). */
export class ClassState {
  /** Not stored yet, not in flight, in seq order. */
  readonly fresh = new Queue<Entry>();
  /** Stored, fetched, not in flight, in id order. */
  buffer: Entry[] = [];
  /** The highest stored id fetched so far. */
  cursor = 0;
  /** Whether every stored row above the cursor has been fetched. */
  fetchedAll = false;
  /** Every stored row with an id up to this one is acknowledged (durable, in the marks table). */
  mark = 0;
  /** Rows at or below the mark still in the table, deleted in bulk once there are enough. */
  unpurged = 0;
  /** Stored rows not yet acknowledged. */
  storedCount = 0;
  /** Acknowledged stored ids, not yet recorded. */
  acked: number[] = [];
}

/** The outbox's bookkeeping: per-class state, what is in flight, and the counts derived from them. */
export class Ledger {
  readonly classes: readonly ClassState[] = Array.from({ length: CLASSES }, () => new ClassState());
  /** Not stored yet and in flight. */
  readonly freshInflight = new Set<Entry>();
  /** Stored rows in flight, with their class: a refill must not send them a second time. */
  readonly inflightIds = new Map<number, number>();
  storedBytes = 0;
  freshBytes = 0;

  /** The state of class `p` (0 = most important). */
  at(p: number): ClassState {
    return this.classes[p] as ClassState;
  }

  /** Forgets what was read from the store, so that everything stored is fetched again from the start. */
  resetReads(): void {
    for (const c of this.classes) {
      c.buffer = [];
      c.cursor = 0;
      c.fetchedAll = false;
    }
  }

  /** Forgets the stored rows (their file is gone or failing): counts start again from what a reopen finds. */
  forgetStored(): void {
    for (const c of this.classes) {
      c.storedCount = 0;
      c.buffer = [];
    }
    this.storedBytes = 0;
  }

  freshCount(): number {
    let n = this.freshInflight.size;
    for (const c of this.classes) n += c.fresh.length;
    return n;
  }

  storedTotal(): number {
    let n = 0;
    for (const c of this.classes) n += c.storedCount;
    return n;
  }

  queued(): number {
    return this.freshCount() + this.storedTotal();
  }

  total(): number {
    return this.storedBytes + this.freshBytes;
  }

  /**
   * Takes a message that leaves the outbox out of the counts. Floored at zero: after a storage failure the
   * counts restart from nothing while stored messages may still be in flight.
   */
  release(entry: { id?: number; priority: number; bytes: number }): void {
    if (entry.id !== undefined) {
      const c = this.at(entry.priority);
      c.storedCount = Math.max(0, c.storedCount - 1);
      this.storedBytes = Math.max(0, this.storedBytes - entry.bytes);
    } else {
      this.freshInflight.delete(entry as Entry);
      this.freshBytes -= entry.bytes;
    }
  }
}
