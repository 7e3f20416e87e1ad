import { EventEmitter } from "node:events";
import { renameSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { type Clock, sleep } from "../core/clock.ts";
import { errorMessage } from "../core/errors.ts";
import { type Component, once } from "../core/lifecycle.ts";
import type { Logger } from "../core/logger.ts";
import { Queue } from "./queue.ts";
import { isCorrupt, OutboxStore, replayed, type StoredMessage } from "./store.ts";

/** Delivery classes, most important first: when the outbox is full the last ones go first. */
export const PRIORITIES = ["alarm", "result", "event", "telemetry"] as const;
export type Priority = (typeof PRIORITIES)[number];
const CLASSES = PRIORITIES.length;

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

export interface TransportLimits {
  /** The broker's Receive Maximum (MQTT 5 CONNACK): QoS 1 messages it accepts in flight. */
  receiveMaximum?: number;
  /** The broker's Maximum Packet Size (MQTT 5 CONNACK). */
  maximumPacketSize?: number;
}

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
}

/** A message in the outbox: a stored row (session and created stay in the database), or one not stored yet. */
type Entry = Omit<StoredMessage, "id" | "session" | "created"> & {
  id?: number;
  session?: string;
  created?: number;
  attempts: number;
};

/** A message produced by this process: everything is known until it is stored. */
type FreshEntry = Entry & { session: string; created: number };

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

/** MQTT 5 reason codes in a PUBACK that may clear up by themselves; any other refusal is final. */
const TRANSIENT_REFUSALS = new Set([0x97 /* quota exceeded */, 0x89 /* server busy */]);
const FETCH = 512;
const DELETE_SPACING_MS = 10;
const PURGE_ROWS = 4096;

/**
 * Store-and-forward for every outgoing message. `send` stamps the envelope and never blocks. Messages are
 * published from memory at once; those not acknowledged by the next commit (every commitInterval or
 * commitMessages) are written to SQLite in one fsynced transaction, and a stored message is deleted only
 * after its PUBACK. So a message acknowledged quickly never touches the flash, and a crash loses at most
 * what was produced since the last commit.
 */
export class Outbox extends EventEmitter<{ drained: [] }> implements Component {
  readonly name = "outbox";
  private readonly o: Required<Omit<OutboxOptions, "dir" | "alarmTopic" | "maxPacketSize" | "heartbeat">> &
    Pick<OutboxOptions, "dir" | "alarmTopic" | "maxPacketSize" | "heartbeat">;
  private store: OutboxStore | undefined;
  private seq = 0;
  /** Not stored yet, not in flight, per class, in seq order. */
  private readonly fresh: Queue<Entry>[] = Array.from({ length: CLASSES }, () => new Queue<Entry>());
  /** Not stored yet and in flight. */
  private readonly freshInflight = new Set<Entry>();
  /** Stored, fetched, not in flight, per class, in id order. */
  private readonly buffers: Entry[][] = Array.from({ length: CLASSES }, () => []);
  private readonly cursors = new Array<number>(CLASSES).fill(0);
  /** Whether every stored row of a class above its cursor has been fetched. */
  private readonly fetchedAll = new Array<boolean>(CLASSES).fill(false);
  /** Stored rows in flight, with their class: a refill must not send them a second time. */
  private readonly inflightIds = new Map<number, number>();
  /** Per class: every stored row with an id up to this one is acknowledged (durable, in the marks table). */
  private readonly marks = new Array<number>(CLASSES).fill(0);
  /** Per class: rows at or below the mark still in the table, deleted in bulk once there are enough. */
  private readonly unpurged = new Array<number>(CLASSES).fill(0);
  private readonly storedCount = new Array<number>(CLASSES).fill(0);
  private storedBytes = 0;
  private freshBytes = 0;
  private inflight = 0;
  private rewind = false;
  /** Acknowledged stored ids per class, not yet recorded. */
  private acked: number[][] = Array.from({ length: CLASSES }, () => []);
  private ackedCount = 0;
  private deleteScheduled = false;
  private lastDelete = Number.NEGATIVE_INFINITY;
  private commitScheduled = false;
  private sent = 0;
  private deadLettered = 0;
  private degraded = false;
  private degradedReason: string | undefined;
  /** The database file's identity when opened: a different one (or none) means it was deleted or replaced. */
  private fileId: string | undefined;
  /** An alarm raised without losing storage (a corrupt file moved aside), cleared by the next good commit. */
  private clearAlarmOnCommit = false;
  private lastCommittedSeq = 0;
  private lastExpiry = Number.NEGATIVE_INFINITY;
  private readonly dropped = Object.fromEntries(PRIORITIES.map((p) => [p, { overflow: 0, expired: 0 }])) as Record<
    Priority,
    Record<DropReason, number>
  >;
  private readonly controller = new AbortController();
  private loop: Promise<void> | undefined;
  private started = false;

  constructor(options: OutboxOptions) {
    super();
    this.o = {
      maxBytes: 64 * 1024 * 1024,
      ttlMs: 7 * 86_400_000,
      commitIntervalMs: 1000,
      commitMessages: 1000,
      window: 64,
      ...options,
    };
  }

  /** Accepts a message without ever blocking the producer; returns its envelope. */
  send(message: OutboxMessage): Envelope {
    const { clock } = this.o;
    this.seq += 1;
    const envelope: Envelope = {
      session: this.o.session,
      seq: this.seq,
      ts: clock.now(),
      mono: Math.round(clock.mono()),
      clockSynced: this.o.clockSynced(),
    };
    const payload = JSON.stringify({ ...envelope, ...message.body });
    const props = message.properties ? encodeProps(message.properties) : null;
    const entry: FreshEntry = {
      session: envelope.session,
      seq: envelope.seq,
      priority: PRIORITIES.indexOf(message.priority),
      topic: message.topic,
      payload,
      props,
      bytes: Buffer.byteLength(payload) + Buffer.byteLength(message.topic),
      created: envelope.ts,
      attempts: 0,
    };
    this.fresh[entry.priority]?.push(entry);
    this.freshBytes += entry.bytes;
    if (this.store === undefined) {
      // Without a database, memory is all there is: hold the bound now.
      while (this.freshBytes > this.o.maxBytes && this.dropFresh("overflow")) {}
    } else if (this.freshCount() >= this.o.commitMessages || this.total() > this.o.maxBytes) {
      this.scheduleCommit();
    }
    this.pump();
    return envelope;
  }

  stats(): OutboxStats {
    return {
      queued: this.queued(),
      bytes: this.total(),
      stored: this.storedTotal(),
      inflight: this.inflight,
      sent: this.sent,
      deadLettered: this.deadLettered,
      dropped: structuredClone(this.dropped),
      degraded: this.degraded,
      fsyncs: this.store?.fsyncCommits ?? 0,
    };
  }

  async start(signal: AbortSignal): Promise<void> {
    signal.addEventListener("abort", () => this.controller.abort(), { once: true });
    this.openStore();
    this.started = true;
    // A store that could not open at start (or was moved aside) is reported now that messages can be sent.
    if (this.degraded || this.clearAlarmOnCommit) this.raiseStorageAlarm(true);
    this.o.transport.on("connected", this.onConnected);
    this.loop = this.run(this.controller.signal);
    this.pump();
  }

  /** Resolves once everything queued so far is acknowledged, or when `signal` aborts. */
  async flush(signal: AbortSignal): Promise<void> {
    while (this.queued() > 0 && !signal.aborted && !this.controller.signal.aborted) {
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

  /** Writes everything not yet acknowledged and closes the database: a clean stop loses nothing. */
  readonly stop = once(async () => {
    this.controller.abort();
    this.o.transport.off("connected", this.onConnected);
    await this.loop;
    this.commit();
    this.store?.close();
    this.store = undefined;
  });

  /** Writes what is waiting now: the commit that the interval or the message count would trigger. */
  commit(): void {
    const now = this.o.clock.now();
    if (this.store && this.fileReplaced()) this.recreateStore();
    if (!this.store && this.o.dir !== undefined) this.openStore();
    const store = this.store;
    this.expireFresh(now);
    if (!store) return;
    try {
      this.deleteAcked();
      // Expiry scans by age: once a minute is plenty for a TTL of hours or days.
      if (now - this.lastExpiry >= 60_000 || now < this.lastExpiry) {
        this.lastExpiry = now;
        for (const row of store.expire(now - this.o.ttlMs, [...this.inflightIds.keys()], this.marks)) {
          this.forgetStored(row, "expired");
        }
      }
      const waiting = [...this.freshInflight, ...this.fresh.flatMap((q) => q.toArray())] as FreshEntry[];
      if (waiting.length > 0) {
        const ids = store.insert(waiting);
        for (const [i, e] of waiting.entries()) {
          e.id = ids[i];
          if (e.id !== undefined && this.freshInflight.has(e)) this.inflightIds.set(e.id, e.priority);
          this.fetchedAll[e.priority] = false;
          this.storedCount[e.priority] = (this.storedCount[e.priority] ?? 0) + 1;
          this.storedBytes += e.bytes;
          this.lastCommittedSeq = Math.max(this.lastCommittedSeq, e.seq);
        }
        this.freshInflight.clear();
        for (const queue of this.fresh) queue.clear();
        this.freshBytes = 0;
      }
      while (this.total() > this.o.maxBytes && this.dropStored()) {}
      if (this.degraded) this.setDegraded(false);
      else if (this.clearAlarmOnCommit) {
        this.clearAlarmOnCommit = false;
        this.o.logger.info("outbox storage working again");
        this.raiseStorageAlarm();
      }
      if (waiting.length > 0) {
        this.o.logger.debug({ lastSeq: this.lastCommittedSeq, stored: waiting.length }, "outbox committed");
      }
    } catch (err) {
      this.storageFailed(err);
    }
    this.pump();
  }

  private readonly onConnected = () => this.pump();

  private path(): string {
    return join(this.o.dir ?? ".", "outbox.db");
  }

  private openStore(): void {
    if (this.o.dir === undefined) return;
    let store: OutboxStore | undefined;
    const path = this.path();
    try {
      store = this.openOrMoveAside(path);
      this.fileId = fileId(path);
      const totals = store.totals();
      const marks = store.marks();
      this.storedBytes = 0;
      for (let p = 0; p < CLASSES; p++) {
        const t = totals.get(p);
        this.storedCount[p] = t?.count ?? 0;
        this.storedBytes += t?.bytes ?? 0;
        this.cursors[p] = 0;
        this.fetchedAll[p] = false;
        this.buffers[p] = [];
        this.marks[p] = marks.get(p) ?? 0;
        this.unpurged[p] = 0;
      }
      this.store = store;
      const { rescued, purged } = store.report;
      if (rescued > 0) {
        this.o.logger.error(
          { rescued },
          "outbox: stored messages were hidden below an acknowledged mark (a defect of versions before 0.2); sending them again",
        );
      }
      const backlog = this.storedTotal();
      // While degraded the store is reopened every commit: say it once, when storage works again.
      const log = this.degraded ? this.o.logger.debug.bind(this.o.logger) : this.o.logger.info.bind(this.o.logger);
      if (backlog > 0 || purged > 0)
        log({ backlog, bytes: this.storedBytes, purged }, "outbox: resuming stored messages");
    } catch (err) {
      store?.close();
      this.storageFailed(err);
    }
  }

  /**
   * Opens the database; a corrupt one is renamed to `outbox.db.corrupt-<time>` (kept for inspection) and a
   * fresh one started, with the storage alarm naming the moved file until the fresh database has committed.
   */
  private openOrMoveAside(path: string, minId = 0): OutboxStore {
    try {
      return new OutboxStore(path, minId);
    } catch (err) {
      if (!isCorrupt(err)) throw err;
      const moved = `${path}.corrupt-${new Date(this.o.clock.now()).toISOString().replace(/[:.]/g, "-")}`;
      renameSync(path, moved);
      for (const suffix of ["-wal", "-shm"]) rmSync(`${path}${suffix}`, { force: true });
      this.o.logger.error(
        { err: errorMessage(err), moved },
        "outbox database corrupt; moved aside, starting a fresh one",
      );
      this.degradedReason = `corrupt database moved to ${moved}`;
      this.clearAlarmOnCommit = true;
      if (this.started) this.raiseStorageAlarm(true);
      return new OutboxStore(path, minId);
    }
  }

  /** Whether the file under the path is no longer the one the store has open (deleted, or replaced). */
  private fileReplaced(): boolean {
    return fileId(this.path()) !== this.fileId;
  }

  /**
   * The database file was deleted or replaced under the open store: SQLite would go on writing into the
   * unlinked file, and a crash would lose it all. Copies every unacknowledged row into a new file at the path
   * (ids above the old ones, so that late acknowledgements of the old rows cannot touch the new), then resends
   * from there: at worst duplicates, flagged replayed.
   */
  private recreateStore(): void {
    const old = this.store;
    if (!old) return;
    const path = this.path();
    this.o.logger.error({ path }, "outbox database deleted or replaced while running; recreating it");
    try {
      const rows = old.pending();
      const fresh = this.openOrMoveAside(path, old.maxId);
      if (rows.length > 0) fresh.insert(rows);
      fresh.close();
    } catch (err) {
      this.storageFailed(err);
      return;
    }
    old.close();
    this.store = undefined;
    this.inflightIds.clear();
    this.acked = Array.from({ length: CLASSES }, () => []);
    this.ackedCount = 0;
    this.openStore();
  }

  private storageFailed(err: unknown): void {
    // Logged once per episode: a full disk retried every second must not fill the journal too.
    if (!this.degraded)
      this.o.logger.error({ err: errorMessage(err) }, "outbox storage failed; keeping messages in memory");
    else this.o.logger.debug({ err: errorMessage(err) }, "outbox storage still failing");
    this.store?.close();
    this.store = undefined;
    // Rows we knew of stay in the file; they come back when it opens again.
    for (let p = 0; p < CLASSES; p++) {
      this.storedCount[p] = 0;
      this.buffers[p] = [];
    }
    this.storedBytes = 0;
    this.acked = Array.from({ length: CLASSES }, () => []);
    this.ackedCount = 0;
    if (!this.degraded) this.setDegraded(true, errorMessage(err));
  }

  private setDegraded(active: boolean, reason?: string): void {
    this.degraded = active;
    this.degradedReason = reason;
    if (!active) this.o.logger.info("outbox storage recovered");
    if (this.started) this.raiseStorageAlarm();
  }

  private raiseStorageAlarm(active = this.degraded): void {
    if (!this.o.alarmTopic) return;
    const reason = active ? this.degradedReason : undefined;
    this.send({
      topic: this.o.alarmTopic,
      priority: "alarm",
      body: { alarm: "outbox-storage", active, ...(reason ? { reason } : {}) },
    });
  }

  private async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      this.o.heartbeat?.beat();
      await sleep(this.o.commitIntervalMs, signal);
      if (!signal.aborted) this.commit();
    }
  }

  private scheduleCommit(): void {
    if (this.commitScheduled) return;
    this.commitScheduled = true;
    setImmediate(() => {
      this.commitScheduled = false;
      this.commit();
    });
  }

  private windowSize(): number {
    const max = this.o.transport.limits().receiveMaximum;
    return Math.max(1, Math.min(this.o.window, max ?? Number.POSITIVE_INFINITY));
  }

  /** Fills the in-flight window from the most important class down. */
  private pump(): void {
    if (!this.started || this.controller.signal.aborted) return;
    const { transport } = this.o;
    if (this.rewind) {
      if (this.inflight > 0) return;
      // A connection died with messages in flight: read the stored ones again from the start.
      for (let p = 0; p < CLASSES; p++) {
        this.buffers[p] = [];
        this.cursors[p] = 0;
        this.fetchedAll[p] = false;
      }
      this.rewind = false;
    }
    const window = this.windowSize();
    while (transport.connected && this.inflight < window) {
      const entry = this.next();
      if (!entry) break;
      this.publish(entry);
    }
    if (this.queued() === 0) this.emit("drained");
  }

  private next(): Entry | undefined {
    for (let p = 0; p < CLASSES; p++) {
      if (this.buffers[p]?.length === 0 && this.store && !this.fetchedAll[p] && (this.storedCount[p] ?? 0) > 0) {
        this.refill(p);
      }
      const stored = this.buffers[p]?.shift();
      if (stored) return stored;
      const fresh = this.fresh[p]?.shift();
      if (fresh) {
        this.freshInflight.add(fresh);
        return fresh;
      }
    }
    return undefined;
  }

  private refill(p: number): void {
    const store = this.store;
    if (!store) return;
    try {
      const after = Math.max(this.cursors[p] ?? 0, this.marks[p] ?? 0);
      // Acknowledged rows beyond the cursor (stored while in flight) still waiting for their delete must not
      // come back.
      if (this.acked[p]?.some((id) => id > after)) this.deleteAcked();
      const rows = store.fetch(p, after, FETCH);
      this.fetchedAll[p] = rows.length < FETCH;
      this.cursors[p] = Number(rows.at(-1)?.id ?? this.cursors[p] ?? 0);
      // Rows become entries in place: this runs once for every message of a backlog.
      const buffer: Entry[] = [];
      for (const row of rows as (Entry & { id: number })[]) {
        if (this.inflightIds.has(row.id)) continue;
        row.attempts = 1;
        buffer.push(row);
      }
      this.buffers[p] = buffer;
    } catch (err) {
      this.storageFailed(err);
    }
  }

  private publish(entry: Entry): void {
    const limit = this.o.transport.limits().maximumPacketSize ?? this.o.maxPacketSize;
    const size = limit === undefined ? 0 : packetSize(entry);
    if (limit !== undefined && size > limit) {
      this.deadLetter(entry, `PACKET_TOO_LARGE: ${size} bytes, broker maximum ${limit}`);
      return;
    }
    entry.attempts += 1;
    this.inflight += 1;
    if (entry.id !== undefined) this.inflightIds.set(entry.id, entry.priority);
    // A message sent again says so: consumers can tell live from replayed data. Stored ones carry the flag.
    const payload = entry.attempts > 1 || entry.id !== undefined ? replayed(entry.payload) : entry.payload;
    const properties = entry.props ? decodeProps(entry.props) : undefined;
    this.o.transport.send(entry.topic, payload, { qos: 1, properties }, (err) => {
      if (err) this.failed(entry, err);
      else this.acknowledged(entry);
    });
  }

  private acknowledged(entry: Entry): void {
    this.inflight -= 1;
    if (entry.id !== undefined) this.inflightIds.delete(entry.id);
    this.sent += 1;
    this.release(entry);
    if (entry.id !== undefined) {
      this.acked[entry.priority]?.push(entry.id);
      this.ackedCount += 1;
      this.scheduleDelete();
    }
    this.pump();
  }

  private failed(entry: Entry, err: unknown): void {
    this.inflight -= 1;
    if (entry.id !== undefined) this.inflightIds.delete(entry.id);
    const code = (err as { code?: unknown }).code;
    if (typeof code === "number" && code >= 0x80 && !TRANSIENT_REFUSALS.has(code)) {
      this.deadLetter(entry, `BROKER_REFUSED: ${errorMessage(err)} (reason code 0x${code.toString(16)})`);
      this.pump();
      return;
    }
    if (entry.id === undefined) {
      // Back in front of its class, in seq order, for the next connection.
      this.freshInflight.delete(entry);
      this.fresh[entry.priority]?.insertBefore(entry, (e) => e.seq > entry.seq);
    } else {
      this.rewind = true;
    }
    this.o.logger.debug({ err: errorMessage(err), seq: entry.seq }, "publish failed; will retry");
    this.pump();
  }

  private deadLetter(entry: Entry, reason: string): void {
    this.deadLettered += 1;
    this.o.logger.warn(
      { seq: entry.seq, session: entry.session, topic: entry.topic, bytes: entry.bytes, reason },
      "message dead-lettered",
    );
    this.release(entry);
    try {
      this.store?.deadLetter(entry, reason, this.o.clock.now());
    } catch (err) {
      this.storageFailed(err);
    }
  }

  private scheduleDelete(): void {
    if (this.ackedCount >= 4 * FETCH) {
      this.deleteAcked();
      return;
    }
    if (this.deleteScheduled) return;
    this.deleteScheduled = true;
    // At most one transaction per DELETE_SPACING_MS: while a backlog drains, acks arrive a few per event-loop
    // turn and a transaction each would halve the drain rate. A crash can then repeat the in-flight window
    // plus these few milliseconds of acknowledged messages.
    const wait = Math.max(0, this.lastDelete + DELETE_SPACING_MS - performance.now());
    const run = () => {
      this.deleteScheduled = false;
      this.deleteAcked();
    };
    if (wait === 0) setImmediate(run);
    else setTimeout(run, wait);
  }

  /**
   * Records the acknowledgements: per class, the mark moves up to just below the oldest stored row not yet
   * acknowledged (one small update instead of a delete per message); acknowledged rows above it (stored while
   * in flight, or acknowledged out of order) are deleted one by one. Rows below a mark are deleted in bulk.
   */
  private deleteAcked(): void {
    const store = this.store;
    if (this.ackedCount === 0 || !store) return;
    this.lastDelete = performance.now();
    const marks = new Map<number, number>();
    const single: number[] = [];
    const covered = new Array<number>(CLASSES).fill(0);
    for (let p = 0; p < CLASSES; p++) {
      const ids = this.acked[p] ?? [];
      if (ids.length === 0) continue;
      this.acked[p] = [];
      // While a failed send waits for its rewind, the rows after it are not all acknowledged: no mark moves.
      const mark = Math.max(this.marks[p] ?? 0, this.rewind ? 0 : this.watermark(p));
      if (mark > (this.marks[p] ?? 0)) marks.set(p, mark);
      for (const id of ids) {
        if (id > mark) single.push(id);
        else covered[p] = (covered[p] ?? 0) + 1;
      }
    }
    this.ackedCount = 0;
    try {
      store.acknowledge(marks, single);
      for (const [p, mark] of marks) this.marks[p] = mark;
      for (let p = 0; p < CLASSES; p++) {
        this.unpurged[p] = (this.unpurged[p] ?? 0) + (covered[p] ?? 0);
        const unpurged = this.unpurged[p] ?? 0;
        if (unpurged >= PURGE_ROWS || (unpurged > 0 && (this.storedCount[p] ?? 0) === 0)) {
          store.purge(p, this.marks[p] ?? 0);
          this.unpurged[p] = 0;
        }
      }
    } catch (err) {
      this.storageFailed(err);
    }
  }

  /**
   * The highest id up to which every stored row of a class is acknowledged or gone: below the cursor (all
   * fetched), below the first buffered row and below every stored row in flight.
   */
  private watermark(p: number): number {
    let mark = this.cursors[p] ?? 0;
    const buffered = this.buffers[p]?.[0]?.id;
    if (buffered !== undefined) mark = Math.min(mark, buffered - 1);
    for (const [id, priority] of this.inflightIds) if (priority === p) mark = Math.min(mark, id - 1);
    return mark;
  }

  /**
   * Takes a message that leaves the outbox out of the counts. Floored at zero: after a storage failure the
   * counts restart from nothing while stored messages may still be in flight.
   */
  private release(entry: { id?: number; priority: number; bytes: number }): void {
    if (entry.id !== undefined) {
      this.storedCount[entry.priority] = Math.max(0, (this.storedCount[entry.priority] ?? 0) - 1);
      this.storedBytes = Math.max(0, this.storedBytes - entry.bytes);
    } else {
      this.freshInflight.delete(entry as Entry);
      this.freshBytes -= entry.bytes;
    }
  }

  private countDrop(priority: number, reason: DropReason): void {
    const name = PRIORITIES[priority];
    if (name) this.dropped[name][reason] += 1;
  }

  private forgetStored(row: { id: number; priority: number; bytes: number }, reason: DropReason): void {
    this.release(row);
    const buffer = this.buffers[row.priority];
    if (buffer) {
      const at = buffer.findIndex((e) => e.id === row.id);
      if (at >= 0) buffer.splice(at, 1);
    }
    this.countDrop(row.priority, reason);
  }

  /** Drops stored messages of the lowest class that has any; false when none is left. */
  private dropStored(): boolean {
    const store = this.store;
    if (!store) return false;
    for (let p = CLASSES - 1; p >= 0; p--) {
      if ((this.storedCount[p] ?? 0) === 0) continue;
      const excess = this.total() - this.o.maxBytes;
      const average = this.storedBytes / Math.max(1, this.storedTotal());
      const count = Math.max(1, Math.min(FETCH, Math.ceil(excess / Math.max(1, average))));
      for (const row of store.dropOldest(p, count, [...this.inflightIds.keys()], this.marks[p] ?? 0)) {
        this.forgetStored({ ...row, priority: p }, "overflow");
      }
      return true;
    }
    return this.dropFresh("overflow");
  }

  /** Drops the oldest in-memory message of the lowest class that has one. */
  private dropFresh(reason: DropReason): boolean {
    for (let p = CLASSES - 1; p >= 0; p--) {
      const entry = this.fresh[p]?.shift();
      if (!entry) continue;
      this.freshBytes -= entry.bytes;
      this.countDrop(p, reason);
      return true;
    }
    return false;
  }

  private expireFresh(now: number): void {
    const before = now - this.o.ttlMs;
    for (let p = 0; p < CLASSES; p++) {
      const queue = this.fresh[p];
      while (queue && queue.length > 0 && (queue.peek()?.created ?? now) < before) {
        const entry = queue.shift();
        if (!entry) break;
        this.freshBytes -= entry.bytes;
        this.countDrop(p, "expired");
      }
    }
  }

  private freshCount(): number {
    let n = this.freshInflight.size;
    for (const queue of this.fresh) n += queue.length;
    return n;
  }

  private queued(): number {
    return this.freshCount() + this.storedTotal();
  }

  private storedTotal(): number {
    let n = 0;
    for (const count of this.storedCount) n += count;
    return n;
  }

  private total(): number {
    return this.storedBytes + this.freshBytes;
  }
}

/** Device and inode of a file, or undefined when there is none. */
function fileId(path: string): string | undefined {
  try {
    const st = statSync(path);
    return `${st.dev}:${st.ino}`;
  } catch {
    return undefined;
  }
}

/** The size of the PUBLISH packet as the broker counts it (MQTT 5, packet id, property length). */
function packetSize(entry: Entry): number {
  // entry.bytes is topic + payload; 18 is room for the replayed flag.
  const props = entry.props ? Buffer.byteLength(entry.props) : 0;
  const remaining = 2 + 2 + 1 + props + entry.bytes + 18;
  const lengthBytes = remaining < 128 ? 1 : remaining < 16_384 ? 2 : remaining < 2_097_152 ? 3 : 4;
  return 1 + lengthBytes + remaining;
}

function encodeProps(p: ReplyProperties): string {
  return JSON.stringify({ responseTopic: p.responseTopic, correlationData: p.correlationData?.toString("base64") });
}

function decodeProps(text: string): ReplyProperties {
  const raw = JSON.parse(text) as { responseTopic?: string; correlationData?: string };
  return {
    ...(raw.responseTopic ? { responseTopic: raw.responseTopic } : {}),
    ...(raw.correlationData ? { correlationData: Buffer.from(raw.correlationData, "base64") } : {}),
  };
}
