import type { LevelWithSilent } from "pino";
import type { Registry } from "prom-client";
import type { z } from "zod";
import type { CommandDefinition, PendingReply } from "../commands/commands.ts";
import type { Typed } from "../config/schema-walk.ts";
import type { ConfigStore } from "../config/store.ts";
import type { Clock } from "../core/clock.ts";
import type { Component } from "../core/lifecycle.ts";
import type { LogRing } from "../core/log-ring.ts";
import type { Logger } from "../core/logger.ts";
import type { ProfileKind } from "../core/profile.ts";
import type { PathsBelow } from "../core/types.ts";
import type { DeviceTopics } from "../mqtt/topics.ts";
import type { Envelope, OutboxMessage } from "../outbox/outbox.ts";
import type { HealthReport, Heartbeat } from "./health.ts";
import type { LatestValues } from "./latest.ts";
import type { RetainedState } from "./retained.ts";
import type { TelemetryPort } from "./telemetry-port.ts";

/** One named source of telemetry. It may fail or hang; the telemetry loop contains both. */
export interface Collector {
  name: string;
  /** The collector's metrics; null or undefined for none; a `WithErrors` when some of them could not be read. */
  collect(): Promise<unknown>;
}

/**
 * A collector's result when part of it could not be read: the metrics that could, and per missing metric
 * (`<collector>.<metric>`) why not. The sample carries both; the metric is absent, never zero.
 */
export class WithErrors {
  readonly value: Record<string, unknown>;
  readonly errors: Record<string, string>;

  constructor(value: Record<string, unknown>, errors: Record<string, string>) {
    this.value = value;
    this.errors = errors;
  }
}

/** A module's verdict on itself: `reason` says what is wrong when `ok` is false. */
export interface Verdict {
  ok: boolean;
  reason?: string;
}

/** A module's section of the configuration file, and how its keys may change (build one with `configSection`). */
export interface ConfigSection<S extends z.ZodType = z.ZodType> {
  /** The top-level key, e.g. `telemetry`. */
  key: string;
  schema: S;
  /** Paths inside this section (without its key: `interval`, not `telemetry.interval`; "" is the whole section)
   * read once at start: a change is stored and used after the next restart. */
  restartOnly?: readonly string[];
  /** Paths inside this section, as for restartOnly, that `config.set` may never change. */
  localOnly?: readonly string[];
}

/** A path inside a section whose schema is S: "" (the whole section) or a key path of its output. */
export type SectionPath<S extends z.ZodType> = "" | PathsBelow<NonNullable<z.output<S>>>;

/**
 * Declares a module's section: its `restartOnly` and `localOnly` paths are checked against its own schema, so
 * that a misspelt or qualified path (`telemetry.interval` inside telemetry's section) does not compile.
 */
export function configSection<const K extends string, S extends z.ZodType>(section: {
  key: K;
  schema: S;
  restartOnly?: readonly NoInfer<SectionPath<S>>[];
  localOnly?: readonly NoInfer<SectionPath<S>>[];
}): { key: K; schema: S; restartOnly?: readonly string[]; localOnly?: readonly string[] } {
  return section;
}

/** What a module reads from its section: durations in milliseconds, sizes in bytes (see config/schema-walk.ts). */
export type SectionConfig<S> = S extends ConfigSection ? Typed<z.output<S["schema"]>> : undefined;

/** What the kernel offers every module. Modules reach each other only through what they contribute. */
export interface ModuleContext<C = unknown> {
  /**
   * The module's own section of the live configuration, typed (durations in ms, sizes in bytes): read it each
   * time a value is needed, so that a reload reaches the module. Another module's values come through ports.
   */
  config(): C;
  /** The device's id (`device.id`, fixed for the process). */
  deviceId: string;
  /** The agent's state directory (`state.dir`, fixed for the process). */
  stateDir: string;
  /** The broker as people name it, host and port without credentials (`mqtt.url`, fixed for the process). */
  broker: string;
  /**
   * The configuration store itself: for the configuration's own commands (config.get, config.set) and for
   * reload events. A module reads its values through `config()`, never through the store's whole file.
   */
  configStore: ConfigStore;
  clock: Clock;
  /** A child logger with `component` set to the module's name. */
  logger: Logger;
  session: string;
  topics: DeviceTopics;
  /** Stamps and queues a message in the outbox (never blocks). */
  send(message: OutboxMessage): Envelope;
  /**
   * Writes every message sent so far and not yet acknowledged to storage, fsynced: for a module that must not
   * forget that it sent something (a watched folder's results) before it moves on. It costs an fsync; most
   * messages wait for the outbox's own commit instead.
   */
  commit(): void;
  /** "Latest value wins" retained topics, republished on every connect. */
  retained: RetainedState;
  /**
   * The link itself, outside the outbox: for a transfer whose messages must never be stored or replayed (an
   * update's chunks). Only the device's own topics.
   */
  direct: DirectChannel;
  /**
   * Raises (`active: true`) or clears an alarm: an event on `P/D/alarms/<type>` through the outbox (the
   * history, never lost) and the retained state `P/D/alarms/<type>/state` (what a dashboard started later
   * sees). Repeating the same body sends nothing.
   */
  alarm(type: string, body: { active: boolean } & Record<string, unknown>): void;
  /** The device's latest figures (the telemetry module writes them; /metrics and Home Assistant read them). */
  latest: LatestValues;
  /** The kernel's health: alive, connected, storage and replay records, every module's verdict. */
  health(): HealthReport;
  /** One prom-client registry for the whole agent: register counters, gauges and histograms here. */
  metrics: Registry;
  /** A loop that beats less often than `boundMs()` makes the agent not alive (wedged). */
  heartbeat(name: string, boundMs: () => number): Heartbeat;
  /** Every module's collectors, gathered by the kernel (for the telemetry module). */
  collectors(): readonly Collector[];
  /** The kernel's own view: device, session, health, modules (for describe). */
  describe(): Record<string, unknown>;
  /** Asks the agent to stop cleanly and exit to be started again; `reply` is answered by the next start. */
  restart(delayMs: number, reply?: PendingReply): void;
  /** Changes the level of every logger. */
  setLogLevel(level: LevelWithSilent): { previous: string; level: string };
  /** The agent's recent log lines as written (secrets scrubbed), in a ring bounded by bytes. */
  logs: Pick<LogRing, "read" | "stats">;
  /** The process environment as main.ts handed it over (modules never read `process.env`). */
  env: Readonly<Record<string, string | undefined>>;
  /** The kernel's pulse, cheap enough for every watchdog ping. */
  vitals(): Vitals;
  /** The module that runs models (tasks), for an update of one; undefined when none is configured. */
  models(): ModelHost | undefined;
  /** The task workers, for a profile of one (diagnostics); undefined when no module runs workers. */
  workers(): WorkerProfiler | undefined;
  /** The telemetry module's port (the board, the sampling pace); undefined when it is not in the agent. */
  telemetry(): TelemetryPort | undefined;
}

/** A task's model as an update sees it: where it is now, and how a new one is tried and kept or dropped. */
export interface ModelHost {
  /** The file the task reads its model from now, and that model's release version if it came from one. */
  current(task: string): { path: string; version?: string };
  /**
   * Puts the verified file beside the task's current model and switches to it, checks it with the task's
   * golden sample, and keeps it (committed) or returns to the previous model (rolled-back, with why).
   */
  install(
    task: string,
    file: string,
    release: { version: string; sha256: string },
  ): Promise<{ state: "committed" } | { state: "rolled-back"; reason: string }>;
}

/** Worker threads, numbered from 1 in the order they started, each profiled in its own thread. */
export interface WorkerProfiler {
  profile(n: number, kind: ProfileKind, ms: number, signal?: AbortSignal): Promise<unknown>;
}

export interface DirectChannel {
  /** Subscribes (QoS 1, on every connect) and hands each message on; call it from `create`. */
  listen(topic: string, handler: (payload: Buffer) => void): void;
  /** Publishes now (QoS 1, not retained); rejects with MQTT_OFFLINE when not connected. */
  publish(topic: string, payload: string | Buffer): Promise<void>;
}

export interface Vitals {
  /** The event loop turns and no loop is wedged: what a watchdog should be told. */
  alive: HealthReport;
  /** Connected to the broker, subscriptions and birth message done. */
  connected: boolean;
  /** Messages waiting in the outbox. */
  queued: number;
}

/** What a module contributes; every part is optional. */
export interface ModuleParts<C = unknown> {
  /** Started in order after the kernel, stopped in reverse. */
  components?: Component[];
  commands?: CommandDefinition[];
  collectors?: Collector[];
  /** The module's section of `describe`. */
  describe?(): unknown;
  /** Fields added to the retained status message (`P/D/status`), read when it is built. */
  status?(): Record<string, unknown>;
  /** Whether the module is healthy (kernel health also needs it to be alive). */
  health?(): Verdict;
  /** Runs models: the target of a model update (one module at most). */
  models?: ModelHost;
  /** Runs worker threads that can be profiled (one module at most). */
  workers?: WorkerProfiler;
  /** Samples the device: the board and the pace, for the others (one module at most). */
  telemetry?: TelemetryPort;
  /** Reacts to a new configuration snapshot (the hot-reloadable keys): the module's own section, typed. */
  onConfigChange?(next: C, previous: C): void;
  /** Stops taking work (first stop step, in reverse module order). */
  quiesce?(): Promise<void> | void;
  /** Finishes work in hand within the shutdown deadline (second step, in reverse module order). */
  drain?(signal: AbortSignal): Promise<void>;
}

/** A capability: a folder with one of these, listed once in `src/modules.ts`. */
export interface Module<S extends ConfigSection | undefined = ConfigSection | undefined> {
  name: string;
  /** The module's own section of the configuration, if it has one. */
  config?: S;
  create(context: ModuleContext<SectionConfig<S>>): ModuleParts<SectionConfig<S>>;
}
