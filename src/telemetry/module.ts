import { Gauge } from "prom-client";
import { z } from "zod";
import { defineCommand } from "../commands/commands.ts";
import { formatDuration } from "../config/duration.ts";
import { type Collector, type Module, WithErrors } from "../kernel/module.ts";
import type { PiMetrics } from "../kernel/telemetry-port.ts";
import { type Board, detectBoard } from "./boards/detect.ts";
import { jetsonMetrics } from "./boards/jetson.ts";
import { piMetrics } from "./boards/pi.ts";
import { systemCollectors } from "./collectors.ts";
import { DEFAULT_DEADBANDS, telemetrySection } from "./config.ts";
import { ChangeFilter, type ChangePolicy } from "./deadband.ts";
import { diskIoCollector, filesystemOf, RunLedger, wear } from "./storage.ts";
import { Reads, type Roots } from "./sysfs.ts";
import { Telemetry } from "./telemetry.ts";

/** A collector whose metrics are read file by file, each failure kept as a reason rather than failing all. */
export function readsCollector<T extends object>(
  name: string,
  roots: Roots,
  read: (reads: Reads) => Promise<T | null>,
): Collector {
  return {
    name,
    async collect() {
      const reads = new Reads(name, roots);
      const value = await read(reads);
      if (Object.keys(reads.errors).length === 0) return value;
      return new WithErrors(Object.fromEntries(Object.entries(value ?? {})), reads.errors);
    },
  };
}

/** The collectors of the board the agent runs on (none for a board without its own). */
export function boardCollectors(board: Board, roots: Roots): Collector[] {
  if (board.kind === "raspberry-pi") return [readsCollector("pi", roots, piMetrics(roots))];
  if (board.kind === "jetson") return [readsCollector("jetson", roots, jetsonMetrics(roots))];
  return [];
}

/** The device's collectors: the generic ones, the board's, disk I/O, the state.dir file system and wear. */
export function deviceCollectors(o: {
  roots: Roots;
  board: Board;
  stateDir: string;
  now: () => number;
  skipInterfaces?: () => readonly string[];
}): Collector[] {
  return [
    ...systemCollectors({
      procRoot: o.roots.proc,
      sysRoot: o.roots.sys,
      ...(o.skipInterfaces ? { skipInterfaces: o.skipInterfaces } : {}),
    }),
    ...boardCollectors(o.board, o.roots),
    { name: "diskio", collect: diskIoCollector(o.roots, o.now) },
    { name: "statefs", collect: () => filesystemOf(o.stateDir) },
    readsCollector("wear", o.roots, (r) => wear(o.roots, r)),
  ];
}

/**
 * Telemetry: samples every module's collectors (the device's own from /proc and /sys, the board's, storage)
 * once per `telemetry.interval` and publishes on `P/D/telemetry` a full sample every `telemetry.fullInterval`
 * and, between them, only the metrics that moved past their deadband. `telemetry.now` takes a full sample.
 */
export const telemetryModule: Module<typeof telemetrySection> = {
  name: "telemetry",
  config: telemetrySection,
  create(ctx) {
    const booted = ctx.config();
    const roots: Roots = { proc: booted.procRoot, sys: booted.sysRoot, host: booted.hostRoot };
    const board = detectBoard(roots);
    new Gauge({
      name: "outpost_board_info",
      help: "The board the agent runs on (the value is always 1)",
      labelNames: ["kind", "model"],
      registers: [ctx.metrics],
    }).set({ kind: board.kind, model: board.model }, 1);
    const stateDir = ctx.stateDir;
    const interval = () => ctx.config().interval;
    const timeout = () => ctx.config().collectorTimeout;
    const filter = new ChangeFilter();
    const counts = { full: 0, partial: 0, quiet: 0 };
    // One policy per configuration snapshot, not one per sample: the filter compiles its rules once per policy.
    const policies = new WeakMap<object, ChangePolicy>();
    const policy = (): ChangePolicy => {
      const t = ctx.config();
      let p = policies.get(t);
      if (!p) {
        p = {
          deadbands: { ...DEFAULT_DEADBANDS, ...t.deadbands },
          fullOnly: t.fullOnly,
          fullIntervalMs: t.fullInterval,
          intervalMs: t.interval,
        };
        policies.set(t, p);
      }
      return p;
    };
    let runs: RunLedger | undefined;
    const telemetry = new Telemetry({
      collectors: () => ctx.collectors(),
      intervalMs: interval,
      timeoutMs: timeout,
      publish: (sample) => {
        const report = filter.decide(sample.metrics, sample.errors, ctx.clock.mono(), policy());
        ctx.latest.update(sample, report);
        boardAlarms(sample.metrics);
        if (!report) {
          counts.quiet += 1;
          return;
        }
        counts[report.full ? "full" : "partial"] += 1;
        ctx.send({ topic: ctx.topics.telemetry, priority: "telemetry", body: { ...report } });
        // A viewer that subscribes later gets the whole picture at once, not after up to fullInterval: the
        // last full sample stays retained (latest value wins, one message per full sample).
        if (report.full) {
          ctx.retained.set(ctx.topics.telemetryFull, { session: ctx.session, ts: ctx.clock.now(), ...report });
        }
      },
      logger: ctx.logger,
      // A cycle may take the collector timeout on top of the interval; three of those is a wedged loop.
      heartbeat: ctx.heartbeat("loop", () => 3 * (interval() + timeout()) + 5000),
      now: () => ctx.clock.mono(),
    });
    const lastSampleAgeMs = () => {
      const last = telemetry.lastSample;
      return last === undefined ? null : Math.round(ctx.clock.mono() - last);
    };
    // Under-voltage and throttling are what a Pi's owner most needs to hear of: alarms, not just figures.
    const boardAlarms = (metrics: Record<string, unknown>) => {
      const now = (metrics.pi as PiMetrics | undefined)?.now;
      if (now?.underVoltage !== undefined) {
        ctx.alarm("under-voltage", {
          active: now.underVoltage,
          ...(now.underVoltage ? { reason: "the supply voltage is below 4.63 V" } : {}),
        });
      }
      if (now?.throttled !== undefined) ctx.alarm("throttled", { active: now.throttled });
    };
    const collectors: Collector[] = [
      ...deviceCollectors({
        roots,
        board,
        stateDir,
        now: () => ctx.clock.mono(),
        skipInterfaces: () => ctx.config().skipInterfaces,
      }),
      { name: "restarts", collect: async () => (runs ? { starts: runs.starts, unclean: runs.unclean } : null) },
    ];
    return {
      components: [
        {
          name: "run-ledger",
          start: async () => {
            runs = new RunLedger(stateDir);
            if (runs.previousUnclean)
              ctx.logger.warn({ starts: runs.starts, unclean: runs.unclean }, "the previous run did not stop cleanly");
          },
          stop: async () => runs?.stopped(),
        },
        telemetry,
      ],
      collectors,
      commands: [
        defineCommand({
          name: "telemetry.now",
          params: z.strictObject({}).nullish(),
          changesState: false,
          run: async () => {
            const sample = await telemetry.sample();
            const errors = Object.keys(sample.errors).length ? { errors: sample.errors } : {};
            return { full: true, metrics: sample.metrics, ...errors };
          },
        }),
      ],
      status: () => ({ board: { kind: board.kind, model: board.model } }),
      telemetry: {
        board: () => board,
        intervalMs: interval,
        lastSampleAgeMs,
        signed: () => ctx.config().sign === true,
      },
      describe: () => {
        const { interval, fullInterval } = ctx.config();
        return {
          // As a duration, like the file writes it.
          interval: formatDuration(interval),
          fullInterval: formatDuration(fullInterval),
          samples: telemetry.count,
          reports: { ...counts },
          lastSampleAgeMs: lastSampleAgeMs(),
          board,
          roots,
        };
      },
      health: () => {
        const age = lastSampleAgeMs();
        const bound = 2 * interval() + timeout() + 1000;
        if (age === null) return { ok: telemetry.count > 0, reason: "no sample yet" };
        return age <= bound ? { ok: true } : { ok: false, reason: `last sample ${age}ms ago` };
      },
      onConfigChange: (next, previous) => {
        const [a, b] = [previous, next];
        // Times the current wait again: the new interval counts from the last sample, not after the old wait.
        if (b.interval !== a.interval) telemetry.wake();
        // New deadbands or a new full interval start from a full sample.
        if (
          JSON.stringify([a.deadbands, a.fullOnly, a.fullInterval]) !==
          JSON.stringify([b.deadbands, b.fullOnly, b.fullInterval])
        )
          filter.reset();
      },
      quiesce: () => telemetry.stop(),
    };
  },
};
