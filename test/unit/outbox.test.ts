import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ManualClock } from "../../src/core/clock.ts";
import { tempDir } from "../helpers/temp.ts";
import { ManualTransport, MemoryTransport, testOutbox } from "../helpers/transports.ts";

let dir: string;
before(() => {
  dir = tempDir("outpost-outbox-");
});
after(() => rmSync(dir, { recursive: true, force: true }));

const outbox = testOutbox;

const noDrops = {
  alarm: { overflow: 0, expired: 0 },
  result: { overflow: 0, expired: 0 },
  event: { overflow: 0, expired: 0 },
  telemetry: { overflow: 0, expired: 0 },
};

describe("outbox", () => {
  it("stamps one seq across all topics with the session envelope", () => {
    const o = outbox(new MemoryTransport());
    const a = o.send({ topic: "t/telemetry", priority: "telemetry", body: { x: 1 } });
    const b = o.send({ topic: "t/alarms/hot", priority: "alarm", body: {} });
    assert.deepEqual(a, { session: "s-1", seq: 1, ts: 1_700_000_000_000, mono: 0, clockSynced: true });
    assert.equal(b.seq, 2);
    assert.equal(o.stats().queued, 2);
  });

  it("holds messages while offline and delivers them, most important first, once connected", async () => {
    const transport = new MemoryTransport();
    const o = outbox(transport);
    await o.start(new AbortController().signal);
    for (let i = 0; i < 5; i++) o.send({ topic: "t/telemetry", priority: "telemetry", body: { i } });
    o.send({ topic: "t/alarms/hot", priority: "alarm", body: {} });
    o.send({ topic: "t/events/door", priority: "event", body: {} });
    transport.up();
    await o.flush(AbortSignal.timeout(5000));
    assert.deepEqual(
      transport.published.map((p) => p.body.seq),
      [6, 7, 1, 2, 3, 4, 5],
    );
    assert.equal(o.stats().queued, 0);
    assert.equal(o.stats().sent, 7);
    await o.stop();
  });

  it("retries a publish that failed instead of losing it, and marks it replayed", async () => {
    const transport = new MemoryTransport();
    const o = outbox(transport);
    await o.start(new AbortController().signal);
    transport.failNext = 1;
    transport.up();
    o.send({ topic: "t/telemetry", priority: "telemetry", body: {} });
    await o.flush(AbortSignal.timeout(5000));
    assert.equal(transport.published[0]?.body.seq, 1);
    assert.equal(transport.published[0]?.body.replayed, true);
    await o.stop();
  });

  it("without a database, holds the byte bound by dropping the lowest class oldest first", () => {
    const body = { pad: "x".repeat(60) };
    const probe = outbox(new MemoryTransport());
    probe.send({ topic: "a", priority: "alarm", body });
    const size = probe.stats().bytes;
    // Room for three and a half messages of this size.
    const o = outbox(new MemoryTransport(), { maxBytes: Math.floor(size * 3.5) });
    o.send({ topic: "a", priority: "alarm", body });
    o.send({ topic: "t", priority: "telemetry", body });
    o.send({ topic: "t", priority: "telemetry", body });
    o.send({ topic: "e", priority: "event", body });
    assert.equal(o.stats().dropped.telemetry.overflow, 1);
    o.send({ topic: "r", priority: "result", body });
    o.send({ topic: "a", priority: "alarm", body });
    const { dropped, queued } = o.stats();
    assert.deepEqual(dropped, {
      ...noDrops,
      telemetry: { overflow: 2, expired: 0 },
      event: { overflow: 1, expired: 0 },
    });
    assert.equal(queued, 3);
  });

  it("never writes a message that was acknowledged before the commit", async () => {
    const transport = new MemoryTransport();
    const o = outbox(transport, { dir: join(dir, "fast") });
    await o.start(new AbortController().signal);
    transport.up();
    for (let i = 0; i < 50; i++) o.send({ topic: "t", priority: "telemetry", body: {} });
    await o.flush(AbortSignal.timeout(5000));
    o.commit();
    assert.equal(o.stats().fsyncs, 0);
    assert.equal(o.stats().stored, 0);
    await o.stop();
  });

  it("keeps committed messages across a restart and replays them with their original session and seq", async () => {
    const path = join(dir, "restart");
    const first = new MemoryTransport();
    const a = outbox(first, { dir: path });
    await a.start(new AbortController().signal);
    for (let i = 0; i < 10; i++) a.send({ topic: "t", priority: "telemetry", body: { i } });
    a.send({ topic: "alarm", priority: "alarm", body: {} });
    a.commit();
    assert.equal(a.stats().stored, 11);
    assert.equal(a.stats().fsyncs, 1);
    await a.stop();

    const second = new MemoryTransport();
    const b = outbox(second, { dir: path, session: "s-2" });
    await b.start(new AbortController().signal);
    assert.equal(b.stats().queued, 11);
    b.send({ topic: "t", priority: "telemetry", body: { live: true } });
    second.up();
    await b.flush(AbortSignal.timeout(5000));
    const seen = second.published.map((p) => `${p.body.session}/${p.body.seq}/${p.body.replayed ?? false}`);
    assert.deepEqual(seen, [
      "s-1/11/true",
      ...Array.from({ length: 10 }, (_, i) => `s-1/${i + 1}/true`),
      "s-2/1/false",
    ]);
    await b.stop();
    const c = outbox(new MemoryTransport(), { dir: path });
    await c.start(new AbortController().signal);
    assert.equal(c.stats().queued, 0, "acknowledged rows are deleted");
    await c.stop();
  });

  it("records acknowledgements while draining: after a restart only the unacknowledged are sent again", async () => {
    const path = join(dir, "marks");
    const first = new MemoryTransport();
    first.holdAfter = 5000;
    const a = outbox(first, { dir: path, window: 20 });
    await a.start(new AbortController().signal);
    for (let i = 0; i < 6000; i++) a.send({ topic: "t", priority: "telemetry", body: { i } });
    a.commit();
    first.up();
    while (first.published.length < 5000) await new Promise((resolve) => setImmediate(resolve));
    await a.stop();

    const second = new MemoryTransport();
    const b = outbox(second, { dir: path, session: "s-2", window: 20 });
    await b.start(new AbortController().signal);
    assert.equal(b.stats().queued, 1000, "the 5,000 acknowledged are not counted again");
    second.up();
    await b.flush(AbortSignal.timeout(10_000));
    const seqs = second.published.map((p) => p.body.seq as number);
    assert.deepEqual(
      seqs,
      Array.from({ length: 1000 }, (_, i) => 5001 + i),
    );
    await b.stop();
    const c = outbox(new MemoryTransport(), { dir: path });
    await c.start(new AbortController().signal);
    assert.equal(c.stats().queued, 0);
    await c.stop();
  });

  it("a stored message whose send fails is sent again with what follows it, nothing lost", async () => {
    const transport = new MemoryTransport();
    transport.failCall = 30;
    const o = outbox(transport, { dir: join(dir, "rewind"), window: 8 });
    await o.start(new AbortController().signal);
    for (let i = 0; i < 200; i++) o.send({ topic: "t", priority: "event", body: { i } });
    o.commit();
    transport.up();
    await o.flush(AbortSignal.timeout(10_000));
    const seqs = transport.published.map((p) => p.body.seq as number);
    assert.deepEqual(
      [...new Set(seqs)].sort((x, y) => x - y),
      Array.from({ length: 200 }, (_, i) => i + 1),
    );
    assert.ok(seqs.length - 200 <= 8, `${seqs.length - 200} duplicates, more than the window`);
    await o.stop();
    const again = outbox(new MemoryTransport(), { dir: join(dir, "rewind") });
    await again.start(new AbortController().signal);
    assert.equal(again.stats().queued, 0);
    await again.stop();
  });

  it("acknowledgements after a failed send do not move the mark past it", async () => {
    const transport = new ManualTransport();
    const o = outbox(transport as unknown as MemoryTransport, { dir: join(dir, "failed-mark"), window: 4 });
    await o.start(new AbortController().signal);
    for (let i = 0; i < 20; i++) o.send({ topic: "t", priority: "event", body: { i } });
    o.commit();
    transport.connected = true;
    transport.emit("connected");
    assert.deepEqual(
      transport.pending.map((p) => p.seq),
      [1, 2, 3, 4],
    );
    transport.take(1).fail();
    transport.take(2).ack();
    transport.take(3).ack();
    o.commit(); // records the acknowledgements now, while 1 waits to be sent again
    transport.take(4).ack();
    while (o.stats().queued > 0) {
      const next = transport.pending[0];
      if (!next) throw new Error(`stuck with ${o.stats().queued} queued`);
      transport.take(next.seq).ack();
      await new Promise((resolve) => setImmediate(resolve));
    }
    assert.deepEqual(
      [...new Set(transport.delivered)].sort((a, b) => a - b),
      Array.from({ length: 20 }, (_, i) => i + 1),
    );
    await o.stop();
  });

  it("with a database, drops the lowest class oldest first when over maxBytes and counts it", async () => {
    const o = outbox(new MemoryTransport(), { dir: join(dir, "full"), maxBytes: 2000 });
    await o.start(new AbortController().signal);
    const body = { pad: "x".repeat(100) };
    for (let i = 0; i < 10; i++) o.send({ topic: "t", priority: "telemetry", body });
    for (let i = 0; i < 5; i++) o.send({ topic: "a", priority: "alarm", body });
    o.commit();
    const { dropped, stored } = o.stats();
    assert.ok(dropped.telemetry.overflow >= 3, JSON.stringify(dropped));
    assert.equal(dropped.alarm.overflow, 0);
    assert.equal(stored, 15 - dropped.telemetry.overflow);
    await o.stop();
  });

  it("drops messages older than the ttl", async () => {
    const clock = new ManualClock(1_700_000_000_000);
    const o = outbox(new MemoryTransport(), { dir: join(dir, "ttl"), clock, ttlMs: 3_600_000 });
    await o.start(new AbortController().signal);
    o.send({ topic: "e", priority: "event", body: {} });
    o.commit();
    clock.advance(3_600_001);
    o.send({ topic: "e", priority: "event", body: {} });
    o.commit();
    assert.equal(o.stats().dropped.event.expired, 1);
    assert.equal(o.stats().queued, 1);
    await o.stop();
  });

  it("dead-letters a message too big for the broker or refused by it, and the rest keep flowing", async () => {
    const transport = new MemoryTransport();
    transport.brokerLimits = { maximumPacketSize: 300 };
    transport.refuse = (topic) => (topic === "forbidden" ? 0x87 : undefined);
    const o = outbox(transport, { dir: join(dir, "dead") });
    await o.start(new AbortController().signal);
    o.send({ topic: "t", priority: "telemetry", body: { n: 1 } });
    o.send({ topic: "t", priority: "telemetry", body: { pad: "x".repeat(400) } });
    o.send({ topic: "forbidden", priority: "event", body: {} });
    o.send({ topic: "t", priority: "telemetry", body: { n: 2 } });
    transport.up();
    await o.flush(AbortSignal.timeout(5000));
    assert.deepEqual(
      transport.published.map((p) => p.body.seq),
      [1, 4],
    );
    assert.equal(o.stats().deadLettered, 2);
    assert.equal(o.stats().queued, 0);
    await o.stop();
  });
});
