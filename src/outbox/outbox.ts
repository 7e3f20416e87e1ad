import { EventEmitter } from "node:events";
import { join } from "node:path";
import { sleep } from "../core/clock.ts";
import { errorMessage } from "../core/errors.ts";
import { type Component, followAbort, once } from "../core/lifecycle.ts";
import { Acknowledgements } from "./acks.ts";
import { Ledger } from "./classes.ts";
import { nextEntry } from "./reader.ts";
import { Retention } from "./retention.ts";
import { copyPending, fileId, openOrMoveAside, reportOpened } from "./storage.ts";
import { StorageHealth } from "./storage-health.ts";
import { type OutboxStore, replayed } from "./store.ts";
import {
  type Entry,
  type Envelope,
  type FreshEntry,
  OUTBOX_DEFAULTS,
  type OutboxMessage,
  type OutboxOptions,
  type OutboxStats,
  PRIORITIES,
} from "./types.ts";
import { decodeProps, encodeProps, finalRefusal, packetSize } from "./wire.ts";

export * from "./types.ts";

/**
 * Store-and-forward for every outgoing message. `send` stamps the envelope and never blocks. Messages are
 * published from memory at once; those not acknowledged by the next commit (every commitInterval or
 * commitMessages) are written to SQLite in one fsynced transaction, and a stored message is deleted only
 * after its PUBACK. So a message acknowledged quickly never touches the flash, and a crash loses at most
 * what was produced since the last commit.
 *
 * This class is the façade: per-class state and counts live in the Ledger (classes.ts), acknowledgement
 * bookkeeping in acks.ts, the byte and age bounds in retention.ts, opening the file in storage.ts.
 */
export class Outbox extends EventEmitter<{ drained: [] }> implements Component {
  readonly name = "outbox";
  private readonly o: Required<
    Omit<OutboxOptions, "dir" | "alarmTopic" | "onAlarm" | "maxPacketSize" | "heartbeat" | "sign">
  > &
    Pick<OutboxOptions, "dir" | "alarmTopic" | "onAlarm" | "maxPacketSize" | "heartbeat" | "sign">;
  private store: OutboxStore | undefined;
  private seq = 0;
  private readonly ledger = new Ledger();
  private readonly acks: Acknowledgements;
  private readonly retention: Retention;
  private readonly health: StorageHealth;
  private inflight = 0;
  private rewind = false;
  private commitScheduled = false;
  private sent = 0;
  private deadLettered = 0;
  /** The database file's identity when opened: a different one (or none) means it was deleted or replaced. */
  private fileId: string | undefined;
  private lastCommittedSeq = 0;
  private readonly controller = new AbortController();
  private loop: Promise<void> | undefined;
  private started = false;

  constructor(options: OutboxOptions) {
    super();
    this.o = { ...OUTBOX_DEFAULTS, ...options };
    this.acks = new Acknowledgements(this.ledger, {
      store: () => this.store,
      rewinding: () => this.rewind,
      storageFailed: (err) => this.storageFailed(err),
      now: () => this.o.clock.mono(),
    });
    this.retention = new Retention(this.ledger, { maxBytes: this.o.maxBytes, ttlMs: this.o.ttlMs });
    this.health = new StorageHealth({
      alarmTopic: this.o.alarmTopic,
      onAlarm: this.o.onAlarm,
      send: (m) => this.send(m),
      logger: this.o.logger,
    });
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
    this.ledger.at(entry.priority).fresh.push(entry);
    this.ledger.freshBytes += entry.bytes;
    if (this.store === undefined) {
      // Without a database, memory is all there is: hold the bound now.
      this.retention.enforceInMemory();
    } else if (this.ledger.freshCount() >= this.o.commitMessages || this.retention.over()) {
      this.scheduleCommit();
    }
    this.pump();
    return envelope;
  }

  stats(): OutboxStats {
    return {
      queued: this.ledger.queued(),
      bytes: this.ledger.total(),
      stored: this.ledger.storedTotal(),
      inflight: this.inflight,
      sent: this.sent,
      deadLettered: this.deadLettered,
      dropped: structuredClone(this.retention.dropped),
      degraded: this.health.degraded,
      fsyncs: this.store?.fsyncCommits ?? 0,
    };
  }

  async start(signal: AbortSignal): Promise<void> {
    followAbort(signal, this.controller);
    this.openStore();
    this.started = true;
    // A store that could not open at start (or was moved aside) is reported now that messages can be sent.
    this.health.start();
    this.o.transport.on("connected", this.onConnected);
    this.loop = this.run(this.controller.signal);
    this.pump();
  }

  /** Resolves once everything queued so far is acknowledged, or when `signal` aborts. */
  async flush(signal: AbortSignal): Promise<void> {
    while (this.ledger.queued() > 0 && !signal.aborted && !this.controller.signal.aborted) {
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
    const ledger = this.ledger;
    this.retention.expireFresh(now);
    if (!store) return;
    try {
      this.acks.flush();
      this.retention.expireStored(now, store);
      const waiting = [...ledger.freshInflight, ...ledger.classes.flatMap((c) => c.fresh.toArray())] as FreshEntry[];
      if (waiting.length > 0) {
        const ids = store.insert(waiting);
        for (const [i, e] of waiting.entries()) {
          e.id = ids[i];
          if (e.id !== undefined && ledger.freshInflight.has(e)) ledger.inflightIds.set(e.id, e.priority);
          const c = ledger.at(e.priority);
          c.fetchedAll = false;
          c.storedCount += 1;
          ledger.storedBytes += e.bytes;
          this.lastCommittedSeq = Math.max(this.lastCommittedSeq, e.seq);
        }
        ledger.freshInflight.clear();
        for (const c of ledger.classes) c.fresh.clear();
        ledger.freshBytes = 0;
      }
      this.retention.enforce(store);
      this.health.committed();
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

  private open(minId = 0): OutboxStore {
    return openOrMoveAside(this.path(), {
      minId,
      now: this.o.clock.now(),
      logger: this.o.logger,
      moved: (to) => this.health.movedAside(to),
    });
  }

  private openStore(): void {
    if (this.o.dir === undefined) return;
    let store: OutboxStore | undefined;
    try {
      store = this.open();
      this.fileId = fileId(this.path());
      const totals = store.totals();
      const marks = store.marks();
      this.ledger.storedBytes = 0;
      this.ledger.resetReads();
      for (const [p, c] of this.ledger.classes.entries()) {
        const t = totals.get(p);
        c.storedCount = t?.count ?? 0;
        this.ledger.storedBytes += t?.bytes ?? 0;
        c.mark = marks.get(p) ?? 0;
        c.unpurged = 0;
      }
      this.store = store;
      // While degraded the store is reopened every commit: say it once, when storage works again.
      reportOpened(store, this.o.logger, this.health.degraded, this.ledger.storedTotal(), this.ledger.storedBytes);
    } catch (err) {
      store?.close();
      this.storageFailed(err);
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
    this.o.logger.error({ path: this.path() }, "outbox database deleted or replaced while running; recreating it");
    try {
      copyPending(old, this.open(old.maxId));
    } catch (err) {
      this.storageFailed(err);
      return;
    }
    old.close();
    this.store = undefined;
    this.ledger.inflightIds.clear();
    this.acks.reset();
    this.openStore();
  }

  private storageFailed(err: unknown): void {
    // Logged once per episode: a full disk retried every second must not fill the journal too.
    const reason = errorMessage(err);
    const first = !this.health.degraded;
    if (first) this.o.logger.error({ err: reason }, "outbox storage failed; keeping messages in memory");
    else this.o.logger.debug({ err: reason }, "outbox storage still failing");
    this.store?.close();
    this.store = undefined;
    // Rows we knew of stay in the file; they come back when it opens again.
    this.ledger.forgetStored();
    this.acks.reset();
    // After the rows are forgotten: the alarm it sends goes to memory, not to the store that failed.
    if (first) this.health.failed(reason);
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
      this.ledger.resetReads();
      this.rewind = false;
    }
    const window = this.windowSize();
    while (transport.connected && this.inflight < window) {
      const entry = nextEntry(
        this.ledger,
        () => this.store,
        this.acks,
        (err) => this.storageFailed(err),
      );
      if (!entry) break;
      this.publish(entry);
    }
    if (this.ledger.queued() === 0) this.emit("drained");
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
    if (entry.id !== undefined) this.ledger.inflightIds.set(entry.id, entry.priority);
    // A message sent again says so: consumers can tell live from replayed data. Stored ones carry the flag.
    const plain = entry.attempts > 1 || entry.id !== undefined ? replayed(entry.payload) : entry.payload;
    const payload = this.o.sign ? this.o.sign(entry.topic, plain, PRIORITIES[entry.priority] ?? "event") : plain;
    const properties = entry.props ? decodeProps(entry.props) : undefined;
    this.o.transport.send(entry.topic, payload, { qos: 1, properties }, (err) => {
      if (err) this.failed(entry, err);
      else this.acknowledged(entry);
    });
  }

  private acknowledged(entry: Entry): void {
    this.inflight -= 1;
    if (entry.id !== undefined) this.ledger.inflightIds.delete(entry.id);
    this.sent += 1;
    this.ledger.release(entry);
    if (entry.id !== undefined) this.acks.record(entry.priority, entry.id);
    this.pump();
  }

  private failed(entry: Entry, err: unknown): void {
    this.inflight -= 1;
    if (entry.id !== undefined) this.ledger.inflightIds.delete(entry.id);
    const code = finalRefusal(err);
    if (code !== undefined) {
      this.deadLetter(entry, `BROKER_REFUSED: ${errorMessage(err)} (reason code 0x${code.toString(16)})`);
      this.pump();
      return;
    }
    if (entry.id === undefined) {
      // Back in front of its class, in seq order, for the next connection.
      this.ledger.freshInflight.delete(entry);
      this.ledger.at(entry.priority).fresh.insertBefore(entry, (e) => e.seq > entry.seq);
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
    this.ledger.release(entry);
    try {
      this.store?.deadLetter(entry, reason, this.o.clock.now());
    } catch (err) {
      this.storageFailed(err);
    }
  }
}
