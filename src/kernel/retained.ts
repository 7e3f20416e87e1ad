import { errorMessage } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";

/** What retained state needs from the MQTT link. */
export interface RetainedLink {
  readonly connected: boolean;
  publish(topic: string, payload: string, options: { qos: 1; retain: true }): Promise<void>;
  on(event: "connected", listener: () => void): unknown;
  off(event: "connected", listener: () => void): unknown;
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
  private readonly sign: (topic: string, payload: string) => string;

  /** `sign`: the device's signature on a value (commands/answers.ts); a removal (empty) is never signed. */
  constructor(link: RetainedLink, logger: Logger, sign: (topic: string, payload: string) => string = (_, p) => p) {
    this.link = link;
    this.logger = logger;
    this.sign = sign;
    link.on("connected", this.republish);
  }

  set(topic: string, value: Record<string, unknown>): void {
    const payload = JSON.stringify(value);
    if (this.latest.get(topic) === payload) return;
    this.latest.set(topic, payload);
    const signed = this.sign(topic, payload);
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
