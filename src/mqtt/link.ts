import { EventEmitter } from "node:events";
import type { Socket } from "node:net";
import type { IClientPublishOptions, MqttClient } from "mqtt";
import { Backoff } from "../core/backoff.ts";
import { sleep } from "../core/clock.ts";
import { errorMessage, OutpostError } from "../core/errors.ts";
import { abortPromise, type Component, followAbort, once } from "../core/lifecycle.ts";
import type { Logger } from "../core/logger.ts";
import { redactUrl } from "../core/patterns.ts";
import { failPending, openClient, withTimeout } from "./connect.ts";
import type { BrokerLimits, LinkEvents, LinkMessage, LinkOptions, ProtocolVersion } from "./link-types.ts";
import { refusedMqtt5 } from "./options.ts";

export type { BrokerLimits, LinkEvents, LinkMessage, LinkOptions, ProtocolVersion } from "./link-types.ts";

/** MQTT 5 DISCONNECT reason: another connection with the same client id took the session. */
const SESSION_TAKEN_OVER = 0x8e;
/** After a takeover, wait at least this long: two agents with one id must not take turns every second. */
const TAKEOVER_MIN_MS = 30_000;
/** A connection that lasted this long resets the backoff. */
const STABLE_MS = 10_000;
/** Connections in a row closed before STABLE_MS that make a takeover the likely cause. */
const SUSPECT_AFTER = 5;

/**
 * One MQTT connection to the broker, kept up by our own loop: exponential backoff with full jitter
 * (MQTT.js's own reconnect is a fixed interval), MQTT 5 with a fallback to 3.1.1, a retained birth on
 * every connect, a will that says "lost", and TCP_NODELAY on every socket.
 */
export class MqttLink extends EventEmitter<LinkEvents> implements Component {
  readonly name = "mqtt";
  private client: MqttClient | undefined;
  private loop: Promise<void> | undefined;
  private readonly controller = new AbortController();
  private readonly options: LinkOptions;
  private readonly log: Logger;
  private protocol: ProtocolVersion;
  private fellBack = false;
  /**
   * The brokers of the list (by index) that refused MQTT 5 in a CONNACK: 3.1.1 for them from then on, MQTT 5
   * still for the others. A fallback after a connect closed unanswered is for that connection only: a broker
   * going down closes connects unanswered too, and a fallback kept for good would lose the MQTT 5 session,
   * with the requests queued in it, once it is back.
   */
  private readonly refused5 = new Set<number>();
  /** MQTT 5 connects in a row closed unanswered (reset by any other outcome). */
  private unanswered5 = 0;
  private connectCount = 0;
  private brokerLimits: BrokerLimits = {};
  private takeoverCount = 0;
  private ready = false;
  /** Connections in a row that the broker closed soon after accepting them. */
  private shortLived = 0;
  /** Brokers of the list left in a row because each dropped SUSPECT_AFTER connections right after accepting. */
  private dropping = 0;
  private readonly subscriptions: string[] = [];
  /** `url`, then `failover`: the one in use is kept while it works, the next tried when it cannot be reached. */
  private readonly urls: readonly string[];
  private urlIndex = 0;

  constructor(options: LinkOptions) {
    super();
    this.options = options;
    this.log = options.logger;
    this.protocol = options.protocolVersion;
    this.urls = [options.url, ...(options.failover ?? [])];
  }

  /** The client id on the broker in use: `clientId` on `url`, `clientId-N` on the Nth failover URL. */
  get clientId(): string {
    return this.urlIndex === 0 ? this.options.clientId : `${this.options.clientId}-${this.urlIndex}`;
  }

  /** The broker URL in use, or tried next. */
  get url(): string {
    return this.urls[this.urlIndex] ?? this.options.url;
  }

  /**
   * Connected and set up: subscriptions answered and the `online` status written. Until then nothing else may
   * be published, so that the status comes first in every session and no backlog overtakes it.
   */
  get connected(): boolean {
    return this.ready && this.client?.connected === true;
  }

  get protocolVersion(): ProtocolVersion {
    return this.protocol;
  }

  get connects(): number {
    return this.connectCount;
  }

  /**
   * How often another client with our client id took the session over: announced (MQTT 5 reason 0x8E) or
   * suspected (the broker closed SUSPECT_AFTER connections in a row right after accepting them, which is
   * what mosquitto 2.0 and MQTT 3.1.1 brokers do on a takeover).
   */
  get takeovers(): number {
    return this.takeoverCount;
  }

  /** The status the link publishes after each connect, as it would be now. */
  birthMessage(): LinkMessage {
    return this.options.birth();
  }

  /** What the broker announced in its last CONNACK (MQTT 5 only). */
  limits(): BrokerLimits {
    return this.brokerLimits;
  }

  /**
   * Topics to subscribe (QoS 1) on every connect, before "connected" is emitted: commands are listened to
   * before any backlog is replayed. Messages arrive as "message" events.
   */
  subscribe(topic: string): void {
    this.subscriptions.push(topic);
  }

  async start(signal: AbortSignal): Promise<void> {
    followAbort(signal, this.controller);
    this.loop = this.run(this.controller.signal);
  }

  /** Publishes on the current connection; rejects with MQTT_OFFLINE when there is none. */
  async publish(topic: string, payload: string | Buffer, options: IClientPublishOptions = {}): Promise<void> {
    const client = this.client;
    if (!client || !this.connected) throw new OutpostError("MQTT_OFFLINE", "not connected to the broker");
    await client.publishAsync(topic, payload, options);
  }

  /**
   * The callback form of `publish`, for the outbox's hot path: no promise per message. `done` is always
   * called asynchronously, with an error if the message was not acknowledged.
   */
  send(topic: string, payload: string, options: IClientPublishOptions, done: (err?: Error) => void): void {
    const client = this.client;
    if (!client || !this.connected) {
      process.nextTick(done, new OutpostError("MQTT_OFFLINE", "not connected to the broker"));
      return;
    }
    // Deferred to a microtask, as a promise would be: the acks of one incoming chunk are all handled before
    // the next publishes are written, so those go out together in one write.
    client.publish(topic, payload, options, (err) => queueMicrotask(() => done(err ?? undefined)));
  }

  readonly stop = once(async () => {
    const client = this.client;
    if (client?.connected) {
      const farewell = this.options.farewell();
      try {
        await withTimeout(
          client.publishAsync(farewell.topic, farewell.payload, { qos: farewell.qos, retain: farewell.retain }),
          2000,
        );
      } catch (err) {
        this.log.warn({ err: errorMessage(err) }, "could not publish the offline status");
      }
    }
    this.controller.abort();
    if (client) await withTimeout(client.endAsync(false), 2000).catch(() => client.end(true));
    await this.loop;
  });

  private async run(signal: AbortSignal): Promise<void> {
    const backoff = new Backoff({
      baseMs: this.options.reconnectMinMs,
      capMs: Math.max(this.options.reconnectMinMs, this.options.reconnectMaxMs),
      random: this.options.random,
    });
    // One promise for the whole loop: a listener per connection would pile up on a flapping link.
    const aborted = abortPromise(signal);
    while (!signal.aborted) {
      try {
        await this.connection(signal, backoff, aborted);
      } catch (err) {
        // Nothing may end this loop while the agent runs: a bug here must cost one attempt, not the link.
        const delay = backoff.next();
        this.log.error({ err, retryInMs: delay }, "mqtt connect loop failed; trying again");
        await sleep(delay, signal);
      }
    }
  }

  /** One connection from attempt to loss, then the wait before the next attempt. */
  private async connection(signal: AbortSignal, backoff: Backoff, aborted: Promise<void>): Promise<void> {
    let client: MqttClient;
    this.fellBack = this.refused5.has(this.urlIndex);
    this.protocol = this.fellBack ? 4 : this.options.protocolVersion;
    try {
      client = await this.connectWithFallback(signal);
    } catch (err) {
      if (signal.aborted) return;
      if (refusedMqtt5(this.protocol, err)) {
        this.log.warn({ url: redactUrl(this.url) }, "broker refused MQTT 5; falling back to MQTT 3.1.1");
        this.refused5.add(this.urlIndex);
        return;
      }
      const failed = this.url;
      // The first MQTT 5 connect closed unanswered is tried again on the same broker (connectWithFallback);
      // any other failure moves on to the next broker, at once but after the last, which waits the backoff.
      if (this.unanswered5 === 0) this.urlIndex = (this.urlIndex + 1) % this.urls.length;
      const delay = this.urlIndex === 0 || this.unanswered5 > 0 ? backoff.next() : 0;
      const next = this.urls.length > 1 ? { next: redactUrl(this.url) } : {};
      const attempt = backoff.attempts;
      this.log.warn(
        { err: errorMessage(err), url: redactUrl(failed), retryInMs: delay, attempt, ...next },
        "mqtt connect failed",
      );
      await sleep(delay, signal);
      return;
    }
    this.ready = false;
    this.client = client;
    this.connectCount += 1;
    const connectedAt = this.now();
    let takenOver = false;
    client.on("disconnect", (packet) => {
      if (packet.reasonCode === SESSION_TAKEN_OVER) takenOver = true;
    });
    const closed = new Promise<void>((resolve) => client.once("close", () => resolve()));
    // Nothing awaited here may outlive the connection: a subscribe or publish whose connection dies is never
    // answered (MQTT.js fails it only in end(true), below), so each wait also ends when the connection closes.
    try {
      await Promise.race([this.afterConnect(client), closed, aborted]);
    } catch (err) {
      this.log.warn({ err: errorMessage(err) }, "mqtt set-up after connect failed");
    }
    await Promise.race([closed, aborted]);
    if (signal.aborted) return;
    this.ready = false;
    this.client = undefined;
    // Pending QoS 1 callbacks of this connection fail now, so that their owners can send again on the next.
    // MQTT.js does that in end(true) only for a clean session; with a persistent one it keeps them to resend on
    // this client object, which is never used again: fail them here.
    client.end(true);
    failPending(client);
    this.safeEmit("disconnected");
    // Only a connection that lasted starts the backoff over: one dropped at once (an oversized retained
    // message, a broker that refuses us after CONNACK, a duplicate client id on 3.1.1) must not be retried
    // every second for ever.
    if (this.now() - connectedAt >= STABLE_MS) {
      backoff.reset();
      this.shortLived = 0;
      this.dropping = 0;
    } else {
      this.shortLived += 1;
    }
    // Unannounced, and other brokers in the list not tried yet: the broker may be what fails (a node cut off
    // from its cluster), so the next one is tried. Once around the list, it is taken for a takeover.
    if (!takenOver && this.shortLived >= SUSPECT_AFTER && this.dropping < this.urls.length - 1) {
      this.shortLived = 0;
      this.dropping += 1;
      const failed = this.url;
      this.urlIndex = (this.urlIndex + 1) % this.urls.length;
      this.log.warn(
        { url: redactUrl(failed), next: redactUrl(this.url) },
        `the broker closed ${SUSPECT_AFTER} connections in a row right after accepting them; trying the next one`,
      );
      await sleep(backoff.next(), signal);
      return;
    }
    if (takenOver || this.shortLived >= SUSPECT_AFTER) {
      this.takeoverCount += 1;
      this.shortLived = 0;
      this.dropping = 0;
      const delay = Math.max(TAKEOVER_MIN_MS, backoff.next());
      this.log.error(
        { clientId: this.clientId, retryInMs: delay, announced: takenOver, takeovers: this.takeoverCount },
        takenOver
          ? "another client connected with this client id and took over the session: is a second agent running with the same device id?"
          : `the broker closed ${SUSPECT_AFTER} connections in a row right after accepting them (its own limits, an ACL, or a second agent with this client id on MQTT 3.1.1, which says nothing of a takeover)`,
      );
      await sleep(delay, signal);
      return;
    }
    this.log.warn("mqtt connection lost");
    await sleep(backoff.next(), signal);
  }

  /** Emits to listeners that must not be able to break the link: a throwing listener is logged. */
  private safeEmit<K extends keyof LinkEvents>(event: K, ...args: LinkEvents[K]): void {
    try {
      (this.emit as (event: K, ...args: LinkEvents[K]) => boolean)(event, ...args);
    } catch (err) {
      this.log.error({ err, event }, "a listener of the mqtt link failed");
    }
  }

  private async afterConnect(client: MqttClient): Promise<void> {
    const socket = client.stream as Partial<Socket> | undefined;
    socket?.setNoDelay?.(true);
    if (this.subscriptions.length > 0) {
      const granted = await client.subscribeAsync(this.subscriptions, { qos: 1 });
      const refused = granted.filter((g) => g.qos >= 0x80).map((g) => g.topic);
      if (refused.length > 0) this.log.error({ topics: refused }, "broker refused subscriptions");
    }
    if (this.client !== client || !client.connected) return;
    const birth = this.options.birth();
    this.log.info(
      { url: redactUrl(this.url), protocolVersion: this.protocol, fellBack: this.fellBack },
      "mqtt connected",
    );
    // Written before anything the "connected" listeners send, so the status comes first on the wire; its PUBACK
    // is not awaited, since a connection that dies before it must lead straight to the next attempt.
    client.publish(birth.topic, birth.payload, { qos: birth.qos, retain: birth.retain }, (err) => {
      if (err) this.log.warn({ err: errorMessage(err) }, "online status not acknowledged");
    });
    this.ready = true;
    this.safeEmit("connected", { protocolVersion: this.protocol });
  }

  private now(): number {
    return this.options.now?.() ?? performance.now();
  }

  /**
   * RabbitMQ 3.10 closes every MQTT 5 CONNECT without a CONNACK. The second such close in a row is followed at
   * once by an MQTT 3.1.1 connect, for this connection only (see refused5). Not the first: a network
   * that comes back drops the connect it held half-open, and a 3.1.1 connect right then would end the MQTT 5
   * session with the requests queued in it.
   */
  private async connectWithFallback(signal: AbortSignal): Promise<MqttClient> {
    try {
      const client = await this.connectOnce(signal);
      this.unanswered5 = 0;
      return client;
    } catch (err) {
      const closed5 = this.protocol === 5 && (err as { code?: unknown }).code === "MQTT_CLOSED" && !signal.aborted;
      this.unanswered5 = closed5 ? this.unanswered5 + 1 : 0;
      if (!closed5 || this.unanswered5 < 2) throw err;
      this.unanswered5 = 0;
      this.protocol = 4;
      try {
        const client = await this.connectOnce(signal);
        this.fellBack = true;
        this.log.warn(
          "broker closed an MQTT 5 connect unanswered; connected with MQTT 3.1.1 (MQTT 5 first again next time)",
        );
        return client;
      } catch {
        this.protocol = 5;
        throw err;
      }
    }
  }

  private async connectOnce(signal: AbortSignal): Promise<MqttClient> {
    const { client, limits } = await openClient(
      // Each broker of the list is a session of its own: RabbitMQ cannot take over the session of a client id
      // whose node died (it closes the connect), so a failover URL adds its place to the client id.
      { ...this.options, url: this.url, clientId: this.clientId },
      this.protocol,
      signal,
      this.log,
      (topic, payload, packet) => this.safeEmit("message", topic, payload, packet),
    );
    this.brokerLimits = limits;
    return client;
  }
}
