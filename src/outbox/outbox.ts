import { EventEmitter } from "node:events";
import { type Clock, sleep } from "../core/clock.ts";
import { errorMessage } from "../core/errors.ts";
import { type Component, once } from "../core/lifecycle.ts";
import type { Logger } from "../core/logger.ts";

/** Delivery classes, most important first: when the outbox is full the last ones go first. */
export const PRIORITIES = ["alarm", "result", "event", "telemetry"] as const;
export type Priority = (typeof PRIORITIES)[number];

export interface Envelope {
  session: string;
  seq: number;
  ts: number;
  mono: number;
  clockSynced: boolean;
}

export interface OutboxMessage {
  topic: string;
  priority: Priority;
  /** The message body; the envelope fields are added to it. */
  body: Record<string, unknown>;
}

/** What the outbox needs from the MQTT link. */
export interface Transport {
  readonly connected: boolean;
  publish(topic: string, payload: string, options: { qos: 1 }): Promise<void>;
  on(event: "connected", listener: () => void): unknown;
  off(event: "connected", listener: () => void): unknown;
}

export interface OutboxOptions {
  transport: Transport;
  clock: Clock;
  session: string;
  clockSynced: () => boolean;
  logger: Logger;
  /** Messages held at most; beyond it the lowest class, oldest first, is dropped. */
  maxMessages?: number;
  /** QoS 1 publishes awaiting PUBACK at once. */
  window?: number;
}

interface Pending {
  seq: number;
  topic: string;
  priority: Priority;
  payload: string;
}

export interface OutboxStats {
  queued: number;
  sent: number;
  dropped: Record<Priority, number>;
}

/**
 * Stamps every outgoing message with the session envelope and delivers it with QoS 1, keeping it until
 * the broker acknowledges it. This first version holds messages in memory; the durable store of the
 * outbox issue replaces the queue, not this interface.
 */
export class Outbox extends EventEmitter implements Component {
  readonly name = "outbox";
  private readonly queues = new Map<Priority, Pending[]>(PRIORITIES.map((p) => [p, []]));
  private readonly options: OutboxOptions;
  private readonly maxMessages: number;
  private readonly window: number;
  private seq = 0;
  private size = 0;
  private sentCount = 0;
  private readonly dropped: Record<Priority, number> = { alarm: 0, result: 0, event: 0, telemetry: 0 };
  private wake: (() => void) | undefined;
  private loop: Promise<void> | undefined;
  private readonly controller = new AbortController();

  constructor(options: OutboxOptions) {
    super();
    this.options = options;
    this.maxMessages = options.maxMessages ?? 10_000;
    this.window = options.window ?? 20;
  }

  /** Accepts a message without ever blocking the producer; returns its envelope. */
  send(message: OutboxMessage): Envelope {
    const { clock } = this.options;
    this.seq += 1;
    const envelope: Envelope = {
      session: this.options.session,
      seq: this.seq,
      ts: clock.now(),
      mono: Math.round(clock.mono()),
      clockSynced: this.options.clockSynced(),
    };
    const payload = JSON.stringify({ ...envelope, ...message.body });
    this.queueOf(message.priority).push({
      seq: envelope.seq,
      topic: message.topic,
      priority: message.priority,
      payload,
    });
    this.size += 1;
    if (this.size > this.maxMessages) this.dropOne();
    this.wake?.();
    return envelope;
  }

  stats(): OutboxStats {
    return { queued: this.size, sent: this.sentCount, dropped: { ...this.dropped } };
  }

  async start(signal: AbortSignal): Promise<void> {
    signal.addEventListener("abort", () => this.controller.abort(), { once: true });
    this.options.transport.on("connected", this.onConnected);
    this.loop = this.run(this.controller.signal);
  }

  /** Resolves once everything queued so far is acknowledged, or when `signal` aborts. */
  async flush(signal: AbortSignal): Promise<void> {
    while (this.size > 0 && !signal.aborted && !this.controller.signal.aborted) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.off("drained", done);
          signal.removeEventListener("abort", done);
          resolve();
        };
        this.once("drained", done);
        signal.addEventListener("abort", done, { once: true });
      });
    }
  }

  readonly stop = once(async () => {
    this.controller.abort();
    this.wake?.();
    this.options.transport.off("connected", this.onConnected);
    await this.loop;
  });

  private readonly onConnected = () => this.wake?.();

  private queueOf(priority: Priority): Pending[] {
    const queue = this.queues.get(priority);
    if (!queue) throw new Error(`unknown priority ${priority}`);
    return queue;
  }

  private dropOne(): void {
    for (let i = PRIORITIES.length - 1; i >= 0; i--) {
      const priority = PRIORITIES[i] as Priority;
      const queue = this.queueOf(priority);
      if (queue.length > 0) {
        queue.shift();
        this.size -= 1;
        this.dropped[priority] += 1;
        return;
      }
    }
  }

  /** The next batch in priority order, oldest first within a class. */
  private nextBatch(): Pending[] {
    const batch: Pending[] = [];
    for (const priority of PRIORITIES) {
      for (const item of this.queueOf(priority)) {
        if (batch.length >= this.window) return batch;
        batch.push(item);
      }
    }
    return batch;
  }

  private remove(item: Pending): void {
    const queue = this.queueOf(item.priority);
    const index = queue.indexOf(item);
    // Gone already when the overflow policy dropped it while it was in flight.
    if (index >= 0) {
      queue.splice(index, 1);
      this.size -= 1;
    }
  }

  private async run(signal: AbortSignal): Promise<void> {
    const { transport, logger } = this.options;
    while (!signal.aborted) {
      const batch = transport.connected ? this.nextBatch() : [];
      if (batch.length === 0) {
        if (this.size === 0) this.emit("drained");
        await new Promise<void>((resolve) => {
          this.wake = resolve;
        });
        this.wake = undefined;
        continue;
      }
      const results = await Promise.allSettled(batch.map((m) => transport.publish(m.topic, m.payload, { qos: 1 })));
      let failed = 0;
      for (const [i, result] of results.entries()) {
        const item = batch[i];
        if (!item) continue;
        if (result.status === "fulfilled") {
          this.remove(item);
          this.sentCount += 1;
        } else {
          failed += 1;
          logger.debug({ err: errorMessage(result.reason), seq: item.seq }, "publish failed; will retry");
        }
      }
      // Failures mean the connection went away; wait for the next one instead of spinning.
      if (failed > 0 && transport.connected) await sleep(100, signal);
    }
  }
}
