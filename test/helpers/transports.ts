import { EventEmitter } from "node:events";
import { pino } from "pino";
import { ManualClock } from "../../src/core/clock.ts";
import { Outbox, type OutboxOptions, type Transport, type TransportLimits } from "../../src/outbox/outbox.ts";

/** An in-memory stand-in for the link: records publishes, can go up and down, and can refuse. */
export class MemoryTransport extends EventEmitter implements Transport {
  connected = false;
  readonly published: { topic: string; body: Record<string, unknown> }[] = [];
  failNext = 0;
  refuse: ((topic: string) => number | undefined) | undefined;
  brokerLimits: TransportLimits = {};

  limits(): TransportLimits {
    return this.brokerLimits;
  }

  /** Publishes after this many successful ones never complete (a broker that stopped answering). */
  holdAfter = Number.POSITIVE_INFINITY;
  /** The publish with this 0-based call number fails once. */
  failCall = -1;
  private calls = 0;

  async publish(topic: string, payload: string): Promise<void> {
    const call = this.calls++;
    if (call === this.failCall) throw new Error("connection reset");
    if (this.published.length >= this.holdAfter) return new Promise(() => {});
    if (!this.connected || this.failNext > 0) {
      this.failNext = Math.max(0, this.failNext - 1);
      throw new Error("offline");
    }
    const code = this.refuse?.(topic);
    if (code !== undefined) throw Object.assign(new Error("Publish error: Not authorized"), { code });
    this.published.push({ topic, body: JSON.parse(payload) as Record<string, unknown> });
  }

  send(topic: string, payload: string, _options: unknown, done: (err?: Error) => void): void {
    this.publish(topic, payload).then(() => done(), done);
  }

  up(): void {
    this.connected = true;
    this.emit("connected");
  }
}

/** Publishes that complete only when the test says so, to order acks and failures exactly. */
export class ManualTransport extends EventEmitter implements Transport {
  connected = false;
  readonly pending: { seq: number; ack: () => void; fail: () => void }[] = [];
  readonly delivered: number[] = [];

  limits(): TransportLimits {
    return {};
  }

  send(_topic: string, payload: string, _options: unknown, done: (err?: Error) => void): void {
    const seq = (JSON.parse(payload) as { seq: number }).seq;
    this.pending.push({
      seq,
      ack: () => {
        this.delivered.push(seq);
        done();
      },
      fail: () => done(new Error("connection reset")),
    });
  }

  take(seq: number) {
    const at = this.pending.findIndex((p) => p.seq === seq);
    const [publish] = this.pending.splice(at, 1);
    if (!publish) throw new Error(`seq ${seq} is not in flight`);
    return publish;
  }
}

/** An outbox on a transport fake: small window, a manual clock, commits only when the test calls commit(). */
export function testOutbox(transport: MemoryTransport, options: Partial<OutboxOptions> = {}): Outbox {
  return new Outbox({
    transport,
    clock: new ManualClock(1_700_000_000_000),
    session: "s-1",
    clockSynced: () => true,
    logger: pino({ level: "silent" }),
    window: 4,
    commitIntervalMs: 60_000,
    ...options,
  });
}
