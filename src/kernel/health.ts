import { monitorEventLoopDelay } from "node:perf_hooks";

/** A long-running loop's proof of life: `beat()` once per turn. */
export interface Heartbeat {
  beat(): void;
}

export interface HealthReport {
  ok: boolean;
  reasons: string[];
}

/** The event loop may stall this long before the agent counts as not alive. */
export const EVENT_LOOP_BOUND_MS = 5000;

/**
 * Two levels. Alive: the event loop turns (its delay stays under a bound) and no loop is wedged (each beats
 * within its own bound). That gates systemd's watchdog: a device whose broker is down is alive and must not
 * be killed. Healthy: alive, and every check a module adds holds (link connected, storage writable, recent
 * telemetry, ...). That gates an update's commit and /healthz.
 */
export class Health {
  private readonly beats = new Map<string, { last: number; boundMs: () => number }>();
  private readonly loop: ReturnType<typeof monitorEventLoopDelay>;
  private readonly mono: () => number;
  /** The worst event-loop delay of the last completed window and of the current one. */
  private previousMax = 0;

  constructor(mono: () => number) {
    this.mono = mono;
    // One sample a second: a finer resolution is a timer wakeup per sample, and an idle agent on a Pi must
    // cost almost nothing; a stall of seconds shows at this resolution all the same.
    this.loop = monitorEventLoopDelay({ resolution: 1000 });
    this.loop.enable();
  }

  heartbeat(name: string, boundMs: () => number): Heartbeat {
    const entry = { last: this.mono(), boundMs };
    this.beats.set(name, entry);
    return {
      beat: () => {
        entry.last = this.mono();
      },
    };
  }

  /** Starts a new window of event-loop delay (the kernel calls it every few seconds). */
  roll(): void {
    this.previousMax = this.loop.max / 1e6;
    this.loop.reset();
  }

  /** The worst event-loop delay seen in the last two windows, in ms. */
  eventLoopDelayMs(): number {
    return Math.max(this.previousMax, this.loop.max / 1e6);
  }

  alive(): HealthReport {
    const reasons: string[] = [];
    const delay = this.eventLoopDelayMs();
    if (delay > EVENT_LOOP_BOUND_MS) reasons.push(`event loop stalled for ${Math.round(delay)}ms`);
    const now = this.mono();
    for (const [name, { last, boundMs }] of this.beats) {
      const age = now - last;
      if (age > boundMs()) reasons.push(`${name} wedged: no heartbeat for ${Math.round(age)}ms`);
    }
    return { ok: reasons.length === 0, reasons };
  }

  /** Alive, and every verdict holds. */
  healthy(verdicts: Iterable<[string, { ok: boolean; reason?: string }]>): HealthReport {
    const alive = this.alive();
    const reasons = [...alive.reasons];
    for (const [name, verdict] of verdicts) {
      if (!verdict.ok) reasons.push(`${name}: ${verdict.reason ?? "not healthy"}`);
    }
    return { ok: reasons.length === 0, reasons };
  }

  close(): void {
    this.loop.disable();
  }
}
