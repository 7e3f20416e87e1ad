import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { describe, it } from "node:test";
import { pino } from "pino";
import { ManualClock } from "../../src/core/clock.ts";
import { Outbox, type Transport } from "../../src/outbox/outbox.ts";

const logger = pino({ level: "silent" });

/** An in-memory stand-in for the link: records publishes and can go up and down. */
class MemoryTransport extends EventEmitter implements Transport {
  connected = false;
  readonly published: { topic: string; body: Record<string, unknown> }[] = [];
  failNext = 0;

  async publish(topic: string, payload: string): Promise<void> {
    if (!this.connected || this.failNext > 0) {
      this.failNext = Math.max(0, this.failNext - 1);
      throw new Error("offline");
    }
    this.published.push({ topic, body: JSON.parse(payload) as Record<string, unknown> });
    this.emit("published");
  }

  up(): void {
    this.connected = true;
    this.emit("connected");
  }

  until(count: number): Promise<void> {
    return new Promise((resolve) => {
      const check = () => {
        if (this.published.length >= count) {
          this.off("published", check);
          resolve();
        }
      };
      this.on("published", check);
      check();
    });
  }
}

function outbox(transport: MemoryTransport, maxMessages = 100) {
  return new Outbox({
    transport,
    clock: new ManualClock(1_700_000_000_000),
    session: "s-1",
    clockSynced: () => true,
    logger,
    maxMessages,
    window: 4,
  });
}

describe("outbox (in memory)", () => {
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
    assert.deepEqual(o.stats(), { queued: 0, sent: 7, dropped: { alarm: 0, result: 0, event: 0, telemetry: 0 } });
    await o.stop();
  });

  it("retries a publish that failed instead of losing it", async () => {
    const transport = new MemoryTransport();
    const o = outbox(transport);
    await o.start(new AbortController().signal);
    transport.failNext = 1;
    transport.up();
    o.send({ topic: "t/telemetry", priority: "telemetry", body: {} });
    await transport.until(1);
    assert.equal(transport.published[0]?.body.seq, 1);
    await o.stop();
  });

  it("when full, drops the lowest class oldest first and counts it", () => {
    const o = outbox(new MemoryTransport(), 3);
    o.send({ topic: "a", priority: "alarm", body: {} });
    o.send({ topic: "t", priority: "telemetry", body: {} });
    o.send({ topic: "t", priority: "telemetry", body: {} });
    o.send({ topic: "e", priority: "event", body: {} });
    o.send({ topic: "r", priority: "result", body: {} });
    assert.deepEqual(o.stats().dropped, { alarm: 0, result: 0, event: 0, telemetry: 2 });
    o.send({ topic: "a", priority: "alarm", body: {} });
    assert.deepEqual(o.stats().dropped, { alarm: 0, result: 0, event: 1, telemetry: 2 });
    assert.equal(o.stats().queued, 3);
  });

  it("flush resolves once everything is acknowledged", async () => {
    const transport = new MemoryTransport();
    const o = outbox(transport);
    await o.start(new AbortController().signal);
    for (let i = 0; i < 10; i++) o.send({ topic: "t", priority: "telemetry", body: {} });
    transport.up();
    await o.flush(AbortSignal.timeout(5000));
    assert.equal(o.stats().queued, 0);
    assert.equal(transport.published.length, 10);
    await o.stop();
  });
});
