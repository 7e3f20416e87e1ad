// Regression tests for issue 8 (hardening), items 1 and 11. Each one failed on bbb3be8, the commit before the fix.

import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { after, before, describe, it } from "node:test";
import type { Outbox } from "../../src/outbox/outbox.ts";
import { tempDir } from "../helpers/temp.ts";
import { MemoryTransport, testOutbox } from "../helpers/transports.ts";

let dir: string;
before(() => {
  dir = tempDir("outpost-outbox-faults-");
});
after(() => rmSync(dir, { recursive: true, force: true }));

const outbox = testOutbox;

/** One outage: `count` messages produced offline and committed, then the link comes back and drains them. */
async function outage(o: Outbox, transport: MemoryTransport, count: number): Promise<void> {
  transport.connected = false;
  for (let i = 0; i < count; i++) o.send({ topic: "t/telemetry", priority: "telemetry", body: { i } });
  o.commit();
  assert.equal(o.stats().stored, count, "the outage's messages are stored");
  transport.up();
  await o.flush(AbortSignal.timeout(5000));
  // Records the acknowledgements now (moves the mark, purges the emptied table) instead of 10 ms later.
  o.commit();
}

function delivered(transport: MemoryTransport): number[] {
  return [...new Set(transport.published.map((p) => p.body.seq as number))].sort((a, b) => a - b);
}

const oneTo = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

describe("outbox ids and database faults", () => {
  it("three outages in one session, the backlog drained between: every message arrives", async () => {
    const transport = new MemoryTransport();
    const o = outbox(transport, { dir: join(dir, "three-outages") });
    await o.start(new AbortController().signal);
    for (let n = 0; n < 3; n++) await outage(o, transport, 8);
    assert.deepEqual(delivered(transport), oneTo(24));
    assert.equal(o.stats().queued, 0);
    await o.stop();
  });

  it("an emptied table across restarts never reuses an id at or below an acknowledged mark", async () => {
    const path = join(dir, "restarts");
    const sessions: string[] = [];
    for (let n = 0; n < 3; n++) {
      const transport = new MemoryTransport();
      const session = `s-${n}`;
      sessions.push(session);
      const o = outbox(transport, { dir: path, session });
      await o.start(new AbortController().signal);
      await outage(o, transport, 5);
      assert.deepEqual(delivered(transport), oneTo(5), `session ${n}`);
      await o.stop();
    }
    // And after a stop with everything stored but nothing drained, the next start finds all of it.
    const a = outbox(new MemoryTransport(), { dir: path, session: "s-a" });
    await a.start(new AbortController().signal);
    for (let i = 0; i < 7; i++) a.send({ topic: "t", priority: "telemetry", body: {} });
    await a.stop();
    const b = outbox(new MemoryTransport(), { dir: path, session: "s-b" });
    await b.start(new AbortController().signal);
    assert.equal(b.stats().queued, 7);
    await b.stop();
  });

  it("a database from before the fix: rows hidden below a mark are sent again, not deleted", async () => {
    const path = join(dir, "legacy");
    // The schema and state that bbb3be8 left behind: the table emptied, then three rows reusing ids 1-3 under
    // a mark of 10.
    const first = outbox(new MemoryTransport(), { dir: path });
    await first.start(new AbortController().signal);
    await first.stop();
    const db = new DatabaseSync(join(path, "outbox.db"));
    db.exec("PRAGMA user_version = 0; DROP TABLE meta; INSERT INTO marks (priority, acked) VALUES (3, 10)");
    const insert = db.prepare(
      "INSERT INTO messages (id, session, seq, priority, topic, payload, props, bytes, created) VALUES (?, 'old', ?, 3, 't', ?, NULL, 10, 1700000000000)",
    );
    for (const id of [1, 2, 3]) insert.run(id, 100 + id, JSON.stringify({ session: "old", seq: 100 + id }));
    db.close();
    const transport = new MemoryTransport();
    const o = outbox(transport, { dir: path, session: "new" });
    await o.start(new AbortController().signal);
    assert.equal(o.stats().queued, 3);
    o.send({ topic: "t", priority: "telemetry", body: {} });
    o.commit();
    transport.up();
    await o.flush(AbortSignal.timeout(5000));
    assert.deepEqual(
      transport.published.map((p) => `${p.body.session}/${p.body.seq}`),
      ["old/101", "old/102", "old/103", "new/1"],
    );
    await o.stop();
  });

  // Item 11: on bbb3be8 a corrupt outbox.db left the agent memory-only for good, with the bad file in place.
  it("a corrupt database is moved aside, a fresh one started, the alarm names the moved file and clears", async () => {
    const path = join(dir, "corrupt");
    mkdirSync(path, { recursive: true });
    writeFileSync(join(path, "outbox.db"), Buffer.alloc(8192, 0x5a));
    const transport = new MemoryTransport();
    const o = outbox(transport, { dir: path, alarmTopic: "t/alarms/outbox-storage" });
    await o.start(new AbortController().signal);
    const moved = readdirSync(path).filter((f) => f.startsWith("outbox.db.corrupt-"));
    assert.equal(moved.length, 1, readdirSync(path).join(", "));
    assert.equal(o.stats().degraded, false);
    o.send({ topic: "t/telemetry", priority: "telemetry", body: {} });
    o.commit();
    assert.equal(o.stats().stored, 2, "the alarm and the message are stored in the fresh database");
    transport.up();
    await o.flush(AbortSignal.timeout(5000));
    const alarms = transport.published.filter((p) => p.topic === "t/alarms/outbox-storage").map((p) => p.body);
    assert.equal(alarms[0]?.active, true);
    assert.match(String(alarms[0]?.reason), new RegExp(moved[0] as string));
    assert.equal(alarms.at(-1)?.active, false, "cleared once the fresh database committed");
    await o.stop();
  });

  // Item 11: on bbb3be8 writes went on into the deleted file (degraded: false) and a restart found nothing.
  it("a database deleted while running is noticed, recreated, and keeps every message", async () => {
    const path = join(dir, "deleted");
    const o = outbox(new MemoryTransport(), { dir: path });
    await o.start(new AbortController().signal);
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 5; i++) o.send({ topic: "t/telemetry", priority: "telemetry", body: { round, i } });
      o.commit();
      for (const f of ["outbox.db", "outbox.db-wal", "outbox.db-shm"]) rmSync(join(path, f), { force: true });
      o.commit();
      assert.ok(existsSync(join(path, "outbox.db")), `recreated after deletion ${round + 1}`);
    }
    // A crash now (no stop): the next process finds all fifteen.
    const transport = new MemoryTransport();
    const next = outbox(transport, { dir: path, session: "s-2" });
    await next.start(new AbortController().signal);
    assert.equal(next.stats().queued, 15);
    transport.up();
    await next.flush(AbortSignal.timeout(5000));
    assert.deepEqual(delivered(transport), oneTo(15));
    await next.stop();
    await o.stop();
  });
});
