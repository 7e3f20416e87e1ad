import { errorMessage } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";

/** What retained state needs from the MQTT link. */
export interface RetainedLink {
  readonly connected: boolean;
  publish(topic: string, payload: string, options: { qos: 1; retain: true }): Promise<void>;
  on(event: "connected", listener: () => void): unknown;
  off(event: "connected", listener: () => void): unknown;
}

export interface RetainedOptions {
  /** The device's signature on a value (commands/answers.ts); a removal (empty) is never signed. */
  sign?: (topic: string, payload: string) => string;
  /** The agent's session: with `sequenced`, each new value of such a topic carries it and a rising `seq`. */
  session?: string;
  /**
   * The topics whose values an operator follows in order (the device's own update and alarm states): one seq
   * across them all, rising with each new value, so that `ctl` can refuse an older value replayed as newer.
   */
  sequenced?: (topic: string) => boolean;
}

/**
 * "Latest value wins" for retained topics (update progress, alarm states, discovery configs). Unlike the
 * outbox, nothing is queued: only the newest value of each topic is kept, published at once when connected
 * and again after every connect (after the birth), so a backlog can never replay an old state over a new one.
 * `clear` publishes the empty retained message that removes a topic from the broker.
 */
export class RetainedState {
  private readonly latest = new Map<string, string>();
  /** What goes out for each topic: the value signed (the same bytes at every republish). */
  private readonly out = new Map<string, string>();
  private readonly link: RetainedLink;
  private readonly logger: Logger;
  private readonly o: RetainedOptions;
  private seq = 0;

  constructor(link: RetainedLink, logger: Logger, options: RetainedOptions = {}) {
    this.link = link;
    this.logger = logger;
    this.o = options;
    link.on("connected", this.republish);
  }

  set(topic: string, value: Record<string, unknown>): void {
    const payload = JSON.stringify(value);
    if (this.latest.get(topic) === payload) return;
    this.latest.set(topic, payload);
    const { session, sign = (_: string, p: string) => p, sequenced = () => false } = this.o;
    // The seq is added to what goes out, not to what is compared: a value set twice is still one message.
    const stamped =
      session !== undefined && sequenced(topic) ? JSON.stringify({ ...value, session, seq: ++this.seq }) : payload;
    const signed = sign(topic, stamped);
    this.out.set(topic, signed);
    this.publish(topic, signed);
  }

  /**
   * Removes a topic from the broker. The empty message is kept like a value, so that a clear made while
   * disconnected still reaches the broker on the next connect (and again after each, which costs nothing).
   */
  clear(topic: string): void {
    if (this.latest.get(topic) === "") return;
    this.latest.set(topic, "");
    this.out.set(topic, "");
    this.publish(topic, "");
  }

  /** The topics held now and their values (cleared ones left out). */
  snapshot(): Record<string, unknown> {
    return Object.fromEntries(
      [...this.latest].filter(([, payload]) => payload !== "").map(([topic, payload]) => [topic, JSON.parse(payload)]),
    );
  }

  close(): void {
    this.link.off("connected", this.republish);
  }

  private readonly republish = (): void => {
    for (const [topic, payload] of this.out) this.publish(topic, payload);
  };

  private publish(topic: string, payload: string): void {
    if (!this.link.connected) return;
    this.link.publish(topic, payload, { qos: 1, retain: true }).catch((err: unknown) => {
      // The next connect publishes the latest value again.
      this.logger.debug({ err: errorMessage(err), topic }, "retained state not published; will on reconnect");
    });
  }
}
