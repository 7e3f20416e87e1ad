import type { Logger } from "../core/logger.ts";
import type { OutboxMessage } from "./types.ts";

export interface StorageHealthOptions {
  /** Where the `outbox-storage` alarm goes (through the outbox itself: memory holds it while storage is down). */
  alarmTopic?: string;
  /** Told every change of the alarm (the kernel keeps it retained). */
  onAlarm?: (body: { active: boolean; reason?: string }) => void;
  send: (message: OutboxMessage) => void;
  logger: Logger;
}

/**
 * Whether the outbox's database can be written, and the `outbox-storage` alarm that says so: raised when
 * storage fails (messages are then kept in memory only) or a corrupt file was moved aside, cleared by the next
 * good commit. Nothing is sent before the outbox has started; what happened before is reported then.
 */
export class StorageHealth {
  /** True while the database cannot be written. */
  degraded = false;
  private reason: string | undefined;
  /** An alarm raised without losing storage (a corrupt file moved aside), cleared by the next good commit. */
  private clearOnCommit = false;
  private started = false;
  private readonly o: StorageHealthOptions;

  constructor(options: StorageHealthOptions) {
    this.o = options;
  }

  start(): void {
    this.started = true;
    if (this.degraded || this.clearOnCommit) this.alarm(true);
  }

  /** Storage failed: true when this starts an episode (log it then, not at every retry). */
  failed(reason: string): boolean {
    if (this.degraded) return false;
    this.set(true, reason);
    return true;
  }

  /** A corrupt database was moved aside and a new one opened: worth an alarm, though storage works. */
  movedAside(to: string): void {
    this.reason = `corrupt database moved to ${to}`;
    this.clearOnCommit = true;
    if (this.started) this.alarm(true);
  }

  /** A commit went through: storage works (again). */
  committed(): void {
    if (this.degraded) {
      this.set(false);
    } else if (this.clearOnCommit) {
      this.clearOnCommit = false;
      this.o.logger.info("outbox storage working again");
      this.alarm(false);
    }
  }

  private set(active: boolean, reason?: string): void {
    this.degraded = active;
    this.reason = reason;
    if (!active) this.o.logger.info("outbox storage recovered");
    if (this.started) this.alarm(active);
  }

  private alarm(active: boolean): void {
    if (!this.o.alarmTopic) return;
    const reason = active ? this.reason : undefined;
    this.o.send({
      topic: this.o.alarmTopic,
      priority: "alarm",
      body: { alarm: "outbox-storage", active, ...(reason ? { reason } : {}) },
    });
    this.o.onAlarm?.({ active, ...(reason ? { reason } : {}) });
  }
}
