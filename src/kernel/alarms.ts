import type { Clock } from "../core/clock.ts";
import type { DeviceTopics } from "../mqtt/topics.ts";
import type { Envelope, OutboxMessage } from "../outbox/outbox.ts";
import type { RetainedState } from "./retained.ts";

export type AlarmBody = { active: boolean } & Record<string, unknown>;

/**
 * Alarms as events and as states: each change goes through the outbox on `P/D/alarms/<type>` (the history:
 * at least once, in order, across outages) and sets the retained `P/D/alarms/<type>/state` (the present: what
 * a dashboard that subscribes later sees at once). A body equal to the last one of its type sends nothing.
 */
export class Alarms {
  private readonly last = new Map<string, string>();
  private readonly o: {
    send(message: OutboxMessage): Envelope;
    retained: RetainedState;
    topics: DeviceTopics;
    clock: Clock;
  };

  constructor(options: Alarms["o"]) {
    this.o = options;
  }

  raise(type: string, body: AlarmBody): void {
    if (!this.changed(type, body)) return;
    this.o.send({ topic: this.o.topics.alarm(type), priority: "alarm", body: { alarm: type, ...body } });
    this.state(type, body);
  }

  /** The retained state only, for an alarm whose event another part already sends (the outbox's own). */
  retain(type: string, body: AlarmBody): void {
    if (this.changed(type, body)) this.state(type, body);
  }

  /** Active alarms by type, for describe. */
  active(): string[] {
    return [...this.last].filter(([, text]) => (JSON.parse(text) as AlarmBody).active).map(([type]) => type);
  }

  private changed(type: string, body: AlarmBody): boolean {
    const text = JSON.stringify(body);
    if (this.last.get(type) === text) return false;
    this.last.set(type, text);
    return true;
  }

  private state(type: string, body: AlarmBody): void {
    this.o.retained.set(`${this.o.topics.alarm(type)}/state`, { alarm: type, ...body, ts: this.o.clock.now() });
  }
}
