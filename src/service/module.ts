import { z } from "zod";
import { defineCommand } from "../commands/commands.ts";
import { sleep } from "../core/clock.ts";
import { loopComponent } from "../core/lifecycle.ts";
import type { Module, ModuleContext } from "../kernel/module.ts";
import { serviceSection } from "./config.ts";
import { Notifier } from "./sd-notify.ts";

/** STATUS= is refreshed this often even without a watchdog. */
const STATUS_EVERY_MS = 10_000;
/** How often the wait for READY looks at the link. */
const READY_POLL_MS = 100;

/**
 * systemd integration (Type=notify): READY=1 once connected or after `service.readyTimeout`, a STATUS= line
 * for `systemctl status`, RELOADING=1/READY=1 around a reload, STOPPING=1 when the stop begins, and
 * WATCHDOG=1 every WatchdogSec/2 only while the kernel says the agent is alive (event loop turning, no loop
 * wedged). Outside systemd (no NOTIFY_SOCKET) it does nothing.
 */
export const serviceModule: Module<typeof serviceSection> = {
  name: "service",
  config: serviceSection,
  create(ctx) {
    const socket = ctx.env.NOTIFY_SOCKET || undefined;
    const notifier = new Notifier(socket, { stateDir: ctx.stateDir, logger: ctx.logger });
    const watchdogMs = watchdogInterval(ctx.env);
    let ready = false;
    let stopping = false;
    let lastStatus = "";
    const status = () => {
      const text = statusLine(ctx);
      if (text !== lastStatus) {
        lastStatus = text;
        notifier.send({ STATUS: text });
      }
    };
    ctx.configStore.on("reload", (phase) => {
      if (!ready || stopping) return;
      if (phase === "start") {
        notifier.send({ RELOADING: "1", MONOTONIC_USEC: monotonicUsec() });
        return;
      }
      lastStatus = statusLine(ctx);
      notifier.send({ READY: "1", STATUS: lastStatus });
    });

    let wedgedLogged = false;
    let lastPing = Number.NEGATIVE_INFINITY;
    /** WATCHDOG=1 when one is due and the agent is alive; none while it is not. */
    const ping = () => {
      // Half the interval as the "recent enough" bound: a timer that fires a hair early must not skip a ping.
      if (watchdogMs === undefined || ctx.clock.mono() - lastPing < watchdogMs / 2) return;
      const { alive } = ctx.vitals();
      if (alive.ok) {
        notifier.send({ WATCHDOG: "1" });
        lastPing = ctx.clock.mono();
        wedgedLogged = false;
      } else if (!wedgedLogged) {
        // No ping: systemd ends the process after WatchdogSec and Restart= starts it again.
        wedgedLogged = true;
        ctx.logger.error({ reasons: alive.reasons }, "not alive: watchdog pings withheld");
      }
    };
    const run = async (signal: AbortSignal) => {
      const deadline = ctx.clock.mono() + ctx.config().readyTimeout;
      while (!signal.aborted && !ctx.vitals().connected && ctx.clock.mono() < deadline) {
        // Waiting for the broker is being alive: pinging here costs nothing if systemd only counts after READY.
        ping();
        await sleep(READY_POLL_MS, signal);
      }
      if (signal.aborted) return;
      ready = true;
      lastStatus = statusLine(ctx);
      notifier.send({ READY: "1", STATUS: lastStatus, MAINPID: String(process.pid) });
      ctx.logger.info({ mechanism: notifier.mechanism, watchdogMs: watchdogMs ?? null }, "systemd told ready");
      while (!signal.aborted) {
        ping();
        status();
        await sleep(watchdogMs === undefined ? STATUS_EVERY_MS : Math.min(watchdogMs, STATUS_EVERY_MS), signal);
      }
    };

    /** What debug.alloc holds, for the life of the process. */
    const held: Buffer[] = [];
    const commands = ctx.config().debugCommands
      ? [
          defineCommand({
            name: "debug.block",
            params: z.strictObject({ ms: z.number().int().min(1).max(600_000) }),
            // It changes nothing, but it stops the agent (a watchdog restart): its replay record must survive
            // that, or one captured request could stop the agent again after every restart.
            changesState: true,
            // Blocks the event loop itself (not a timer): what a wedged native call or a busy loop would do.
            run: ({ ms }) => {
              Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
              return { blockedMs: ms };
            },
          }),
          defineCommand({
            name: "debug.alloc",
            params: z.strictObject({ mib: z.number().int().min(1).max(4096) }),
            // Past the unit's MemoryMax the kernel kills the agent: like debug.block, it must not run twice.
            changesState: true,
            // Touches every page (a Buffer not written to costs nothing): what a leak would do, at once.
            run: ({ mib }) => {
              held.push(Buffer.alloc(mib * 1024 * 1024, 1));
              return { heldMib: held.reduce((n, b) => n + b.length, 0) / 1024 / 1024 };
            },
          }),
        ]
      : [];
    return {
      components: notifier.enabled
        ? [loopComponent("service.notify", run, (err) => ctx.logger.error({ err }, "sd_notify loop failed"))]
        : [],
      commands,
      describe: () => ({ systemd: notifier.mechanism, watchdogMs: watchdogMs ?? null, ready }),
      quiesce: () => {
        if (stopping) return;
        stopping = true;
        notifier.send({ STOPPING: "1", STATUS: "stopping: draining the outbox" });
      },
    };
  },
};

/** Half of WatchdogSec, when the watchdog is on and meant for this process. */
export function watchdogInterval(env: Readonly<Record<string, string | undefined>>): number | undefined {
  const usec = Number(env.WATCHDOG_USEC);
  if (!Number.isFinite(usec) || usec <= 0) return undefined;
  if (env.WATCHDOG_PID !== undefined && Number(env.WATCHDOG_PID) !== process.pid) return undefined;
  return Math.max(100, Math.floor(usec / 2000));
}

function statusLine(ctx: ModuleContext): string {
  const { connected, queued, alive } = ctx.vitals();
  const age = ctx.telemetry()?.lastSampleAgeMs();
  const parts = [
    connected ? `connected to ${ctx.broker}` : "offline: broker not reachable, messages kept",
    `outbox ${queued} queued`,
  ];
  if (age === null) parts.push("no telemetry yet");
  else if (age !== undefined) parts.push(`last telemetry ${Math.round(age / 1000)}s ago`);
  if (!alive.ok) parts.push(`NOT ALIVE: ${alive.reasons.join("; ")}`);
  return parts.join(", ");
}

function monotonicUsec(): string {
  return String(process.hrtime.bigint() / 1000n);
}
