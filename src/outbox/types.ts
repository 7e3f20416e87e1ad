import type { Clock } from "../core/clock.ts";
import type { Logger } from "../core/logger.ts";
import type { BrokerLimits } from "../mqtt/link.ts";
import type { StoredMessage } from "./store.ts";

/** Delivery classes, most important first: when the outbox is full the last ones go first. */
export const PRIORITIES = ["alarm", "result", "event", "telemetry"] as const;
export type Priority = (typeof PRIORITIES)[number];
export const CLASSES = PRIORITIES.length;

export interface Envelope {
  session: string;
  seq: number;
  ts: number;
  mono: number;
  clockSynced: boolean;
}

/** MQTT 5 publish properties that a reply needs. */
export interface ReplyProperties {
  responseTopic?: string;
  correlationData?: Buffer;
}

export interface OutboxMessage {
  topic: string;
  priority: Priority;
  /** The message body; the envelope fields are added to it. */
  body: Record<string, unknown>;
  properties?: ReplyProperties;
}

/** What the broker announced in its CONNACK (MQTT 5): the link's own record of it. */
export type TransportLimits = BrokerLimits;

/** What the outbox needs from the MQTT link. */
export interface Transport {
  readonly connected: boolean;
  /** Publishes; `done` runs asynchronously, with an error unless the broker acknowledged (PUBACK). */
  send(
    topic: string,
    payload: string,
    options: { qos: 1; properties?: ReplyProperties },
    done: (err?: Error) => void,
  ): void;
  limits(): TransportLimits;
  on(event: "connected", listener: () => void): unknown;
  off(event: "connected", listener: () => void): unknown;
}

export interface OutboxOptions {
  transport: Transport;
  clock: Clock;
  session: string;
  clockSynced: () => boolean;
  logger: Logger;
  /** Directory of outbox.db; without it the outbox keeps messages in memory only. */
  dir?: string;
  /** Topic for the outbox's own alarm (storage trouble). */
  alarmTopic?: string;
  /** Told each storage alarm as it is sent (the kernel keeps it as a retained alarm state too). */
  onAlarm?: (body: { active: boolean; reason?: string }) => void;
  /** Bytes held at most (stored and in memory); beyond it the lowest class, oldest first, is dropped. */
  maxBytes?: number;
  /** Age after which an undelivered message is dropped. */
  ttlMs?: number;
  /** How often messages not yet acknowledged are written (one fsync per write). */
  commitIntervalMs?: number;
  /** ... or as soon as this many are waiting. */
  commitMessages?: number;
  /** QoS 1 publishes awaiting PUBACK at once (also bounded by the broker's Receive Maximum). */
  window?: number;
  /** A packet size limit for brokers that do not announce one (MQTT 3.1.1). */
  maxPacketSize?: number;
  /** Beaten at every turn of the commit loop: a loop that stops beating is wedged. */
  heartbeat?: { beat(): void };
  /**
   * Signs a payload as it is published (the device's answers: commands/answers.ts). Applied to every attempt,
   * after the `replayed` flag is set, so that what is signed is exactly what goes out.
   */
  sign?: (topic: string, payload: string, priority: Priority) => string;
}

/** A message in the outbox: a stored row (session and created stay in the database), or one not stored yet. */
export type Entry = Omit<StoredMessage, "id" | "session" | "created"> & {
  id?: number;
  session?: string;
  created?: number;
  attempts: number;
};

/** A message produced by this process: everything is known until it is stored. */
export type FreshEntry = Entry & { session: string; created: number };

/** What an option left out means. */
export const OUTBOX_DEFAULTS = {
  maxBytes: 64 * 1024 * 1024,
  ttlMs: 7 * 86_400_000,
  commitIntervalMs: 1000,
  commitMessages: 1000,
  window: 64,
};

export type DropReason = "overflow" | "expired";

export interface OutboxStats {
  /** Messages not yet acknowledged (stored, in memory, in flight). */
  queued: number;
  /** Bytes of those messages (topic and payload). */
  bytes: number;
  stored: number;
  inflight: number;
  sent: number;
  deadLettered: number;
  dropped: Record<Priority, Record<DropReason, number>>;
  /** True while the database cannot be written: messages are then kept in memory only. */
  degraded: boolean;
  /** Commits that were fsynced since start. */
  fsyncs: number;
}
