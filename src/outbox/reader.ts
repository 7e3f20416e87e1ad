import { type Acknowledgements, FETCH } from "./acks.ts";
import type { Ledger } from "./classes.ts";
import type { OutboxStore } from "./store.ts";
import type { Entry } from "./types.ts";

/**
 * The next message to publish: from the most important class down, stored messages (read from the database
 * in batches, oldest first) before fresh ones of the same class. A fresh entry taken is marked in flight.
 * `store` is asked each time, since a failed read closes it; `storageFailed` hears that failure, and the
 * class then goes on from memory.
 */
export function nextEntry(
  ledger: Ledger,
  store: () => OutboxStore | undefined,
  acks: Acknowledgements,
  storageFailed: (err: unknown) => void,
): Entry | undefined {
  const classes = ledger.classes;
  for (let p = 0; p < classes.length; p++) {
    const c = classes[p] as (typeof classes)[number];
    // Asked each time: a failed read closes the store.
    const db = store();
    if (c.buffer.length === 0 && db && !c.fetchedAll && c.storedCount > 0) {
      try {
        refill(ledger, db, acks, p);
      } catch (err) {
        storageFailed(err);
      }
    }
    const stored = c.buffer.shift();
    if (stored) return stored;
    const fresh = c.fresh.shift();
    if (fresh) {
      ledger.freshInflight.add(fresh);
      return fresh;
    }
  }
  return undefined;
}

function refill(ledger: Ledger, store: OutboxStore, acks: Acknowledgements, p: number): void {
  const c = ledger.at(p);
  const after = Math.max(c.cursor, c.mark);
  // Acknowledged rows beyond the cursor (stored while in flight) still waiting for their delete must not
  // come back.
  if (acks.pendingAbove(p, after)) acks.flush();
  const rows = store.fetch(p, after, FETCH);
  c.fetchedAll = rows.length < FETCH;
  c.cursor = Number(rows.at(-1)?.id ?? c.cursor);
  // Rows become entries in place: this runs once for every message of a backlog.
  const buffer: Entry[] = [];
  const inflight = ledger.inflightIds;
  for (const row of rows as (Entry & { id: number })[]) {
    if (inflight.has(row.id)) continue;
    row.attempts = 1;
    buffer.push(row);
  }
  c.buffer = buffer;
}
