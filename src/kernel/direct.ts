import type { Logger } from "../core/logger.ts";
import type { MqttLink } from "../mqtt/link.ts";
import type { DirectChannel } from "./module.ts";

/**
 * The link itself, outside the outbox, for the device's own topics only: a transfer whose messages must never
 * be stored or replayed (an update's chunks). One listener per topic; a handler that throws is logged.
 */
export class Direct implements DirectChannel {
  private readonly listeners = new Map<string, (payload: Buffer) => void>();
  private readonly link: MqttLink;
  /** The device's topic base (`P/D/`): what every topic here must start with. */
  private readonly base: string;
  private readonly logger: Logger;

  constructor(link: MqttLink, base: string, logger: Logger) {
    this.link = link;
    this.base = base;
    this.logger = logger;
  }

  listen(topic: string, handler: (payload: Buffer) => void): void {
    this.own(topic);
    if (this.listeners.size === 0) {
      this.link.on("message", (t: string, payload: Buffer) => {
        const listener = this.listeners.get(t);
        if (!listener) return;
        try {
          listener(payload);
        } catch (err) {
          this.logger.error({ err, topic: t }, "a direct message handler failed");
        }
      });
    }
    this.listeners.set(topic, handler);
    this.link.subscribe(topic);
  }

  publish(topic: string, payload: string | Buffer): Promise<void> {
    this.own(topic);
    return this.link.publish(topic, payload, { qos: 1 });
  }

  private own(topic: string): void {
    if (!topic.startsWith(this.base) || /[+#]/.test(topic)) {
      throw new Error(`${topic} is not one of the device's own topics`);
    }
  }
}
