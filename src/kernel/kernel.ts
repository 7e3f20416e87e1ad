import { randomUUID } from "node:crypto";
import { readFileSync, rmSync } from "node:fs";
import { uptime } from "node:os";
import { join } from "node:path";
import type { LevelWithSilent } from "pino";
import { Registry } from "prom-client";
import { Commands, type PendingReply } from "../commands/commands.ts";
import { ReplayGuard } from "../commands/replay.ts";
import { durationMs } from "../config/duration.ts";
import { sizeBytes } from "../config/size.ts";
import type { ConfigStore, Snapshot } from "../config/store.ts";
import { type Clock, sleep } from "../core/clock.ts";
import { errorMessage } from "../core/errors.ts";
import { writeFileAtomically } from "../core/files.ts";
import { abortPromise, type Component } from "../core/lifecycle.ts";
import type { Logger } from "../core/logger.ts";
import { MqttLink } from "../mqtt/link.ts";
import { type DeviceTopics, deviceTopics } from "../mqtt/topics.ts";
import { Outbox } from "../outbox/outbox.ts";
import { clockSyncProbe } from "../system/clock-sync.ts";
import { VERSION } from "../version.ts";
import { Alarms } from "./alarms.ts";
import { Health, type HealthReport } from "./health.ts";
import { LatestValues } from "./latest.ts";
import type { Collector, Module, ModuleContext, ModuleParts, Verdict } from "./module.ts";
import { RetainedState } from "./retained.ts";
import { statusMessage } from "./status.ts";
import { agentMetrics, commandPolicy, linkOptions, registerKernelMetrics, warnIfUnsigned } from "./wiring.ts";

export interface KernelOptions {
  settings: ConfigStore;
  logger: Logger;
  /** Changes the level of the logger and all its children. */
  setLogLevel?: (level: LevelWithSilent) => void;
  clock: Clock;
  clockSynced?: () => boolean;
  modules: readonly Module[];
  /** The process environment (main.ts reads it; modules get it from their context). */
  env?: Readonly<Record<string, string | undefined>>;
  /** Told each step of start and stop as it happens, in order (tests assert the order). */
  trace?: (step: string) => void;
}

/** Kept from the shutdown budget for the outbox commit, `offline` and closing (at most 30 % of the budget). */
const STOP_RESERVE_MS = 2000;

/** The final reply of a `restart`, kept in state.dir until the next process has sent it. */
const PENDING_FILE = "pending-replies.json";

/**
 * The durable core, built in a fixed order (config store, MQTT link, outbox, replay guard, command router),
 * and the modules built on it. Start: outbox, command intake, link, then each module's components in list
 * order. Stop: quiesce intake (commands, then modules in reverse), drain modules in reverse, flush the outbox,
 * publish `offline` and disconnect, stop module components in reverse, close the outbox.
 */
export class Kernel {
  readonly session = randomUUID();
  readonly link: MqttLink;
  readonly outbox: Outbox;
  readonly replay: ReplayGuard;
  readonly commands: Commands;
  readonly retained: RetainedState;
  readonly alarms: Alarms;
  readonly latest: LatestValues;
  readonly metrics = new Registry();
  readonly health: Health;
  readonly topics: DeviceTopics;
  /** Resolves when the `restart` command asks the process to stop and be started again. */
  readonly restartRequested: Promise<void>;
  private requestRestart: () => void = () => {};
  private readonly o: KernelOptions;
  private readonly modules: { module: Module; parts: ModuleParts }[] = [];
  private readonly controller = new AbortController();
  private readonly started: Component[] = [];
  private stopping: Promise<void> | undefined;
  private readonly startedAt: number;

  constructor(options: KernelOptions) {
    this.o = options;
    const { settings, logger, clock } = options;
    // Restart-only parts (device, mqtt, outbox, state) are built from the snapshot at start; the rest reads
    // `settings.current()` each time it needs a value, so a reload reaches it without a restart.
    const { config } = settings.current();
    this.startedAt = clock.mono();
    this.restartRequested = new Promise((resolve) => {
      this.requestRestart = resolve;
    });
    this.topics = deviceTopics(config.mqtt.topicPrefix, config.device.id);
    this.health = new Health(() => clock.mono());
    const clockSynced = options.clockSynced ?? clockSyncProbe();
    const status = (state: "online" | "offline" | "lost") =>
      statusMessage(state, {
        topic: this.topics.status,
        session: this.session,
        clock,
        clockSynced,
        config: settings.current(),
        protocolVersion: this.link.protocolVersion,
        replayStore: this.replay.durable,
        extra: () => this.statusExtras(),
      });

    this.link = new MqttLink({
      ...linkOptions(config),
      will: () => status("lost"),
      birth: () => status("online"),
      farewell: () => status("offline"),
      logger: logger.child({ component: "mqtt" }),
    });
    const outboxLog = logger.child({ component: "outbox" });
    const commit = durationMs(config.outbox.commitInterval);
    this.outbox = new Outbox({
      transport: this.link,
      clock,
      session: this.session,
      clockSynced,
      logger: outboxLog,
      dir: config.state.dir,
      alarmTopic: this.topics.alarm("outbox-storage"),
      onAlarm: (body) => this.alarms.retain("outbox-storage", body),
      maxBytes: sizeBytes(config.outbox.maxBytes),
      ttlMs: durationMs(config.outbox.ttl),
      commitIntervalMs: commit,
      commitMessages: config.outbox.commitMessages,
      window: config.outbox.window,
      maxPacketSize: config.outbox.maxPacketSize,
      heartbeat: this.health.heartbeat("outbox.commits", () => 3 * commit + 5000),
    });
    const commandLog = logger.child({ component: "commands" });
    this.replay = new ReplayGuard({ dir: config.state.dir, logger: commandLog, now: clock.now() });
    this.commands = new Commands({
      source: this.link,
      topicPrefix: config.mqtt.topicPrefix,
      deviceId: config.device.id,
      groups: config.device.groups,
      reply: (reply) => this.outbox.send({ ...reply, body: { ...reply.body }, priority: "result" }),
      policy: commandPolicy(settings),
      replay: this.replay,
      clock,
      logger: commandLog,
    });
    this.retained = new RetainedState(this.link, logger.child({ component: "retained" }));
    this.alarms = new Alarms({ send: (m) => this.outbox.send(m), retained: this.retained, topics: this.topics, clock });
    this.latest = new LatestValues((err) => logger.error({ err }, "a listener of the latest values failed"));
    this.commands.observe = registerKernelMetrics(this.metrics, {
      outbox: () => this.outbox.stats(),
      connected: () => this.link.connected,
      connects: () => this.link.connects,
      commands: () => this.commands.counts,
      configVersion: () => settings.current().version,
      eventLoopDelayMs: () => this.health.eventLoopDelayMs(),
    });
    for (const module of options.modules) {
      const parts = module.create(this.context(module));
      this.commands.register(parts.commands ?? []);
      this.modules.push({ module, parts });
    }
    warnIfUnsigned(config.commands.allowUnsigned, logger);
    settings.on("change", (next, previous) => this.adapt(next, previous));
    this.replay.onDurabilityChange((durable) => {
      logger[durable ? "info" : "error"](
        durable ? "command replay store writable again" : "command replay store failed; refusing state changes",
      );
      this.replayAlarm(durable);
      this.republishStatus();
    });
  }

  async start(): Promise<void> {
    const { logger, settings } = this.o;
    const { config } = settings.current();
    logger.info(
      { device: config.device.id, session: this.session, version: VERSION, url: config.mqtt.url },
      "agent starting",
    );
    const signal = this.controller.signal;
    // The outbox opens its store and the command topics are registered before the link connects.
    const components = [
      this.outbox,
      this.commands,
      this.link,
      ...this.modules.flatMap((m) => m.parts.components ?? []),
    ];
    for (const component of components) {
      this.trace(`start:${component.name}`);
      await component.start(signal);
      this.started.push(component);
    }
    void this.housekeeping(signal);
    if (!this.replay.durable) this.replayAlarm(false);
    this.reportDroppedOverrides();
    this.sendPendingReplies();
  }

  /**
   * Drains and stops everything, in the documented order, within one budget (`shutdown.deadline`): the drain
   * and the flush get what is left of it but a reserve, which the outbox commit, `offline` and the closing
   * steps keep however long the drain would have taken. The flush waits only while the broker is reachable.
   */
  stop(budgetMs = 10_000): Promise<void> {
    this.stopping ??= this.doStop(budgetMs);
    return this.stopping;
  }

  describe(): Record<string, unknown> {
    const snapshot = this.o.settings.current();
    const modules = Object.fromEntries(
      this.modules.map(({ module, parts }) => [module.name, parts.describe?.() ?? {}]),
    );
    return {
      device: snapshot.config.device.id,
      groups: snapshot.config.device.groups,
      version: VERSION,
      node: process.version,
      platform: process.platform,
      arch: process.arch,
      session: this.session,
      protocolVersion: this.link.protocolVersion,
      capabilities: {
        commands: this.commands.commandNames,
        modules: this.modules.map((m) => m.module.name),
        signedCommands: true,
        outbox: "sqlite",
      },
      commands: { replayStore: this.replay.durable ? "ok" : "unavailable", ...this.commands.counts },
      config: { version: snapshot.version, hash: snapshot.hash, restartRequired: this.o.settings.restartRequired() },
      uptime: { agentMs: Math.round(this.o.clock.mono() - this.startedAt), systemS: Math.round(uptime()) },
      health: { alive: this.health.alive(), healthy: this.healthy() },
      alarms: this.alarms.active(),
      modules,
    };
  }

  /** Alive, connected, storage writable, replay records durable, and every module's own verdict. */
  healthy(): HealthReport {
    const verdicts: [string, Verdict][] = [
      ["mqtt", this.link.connected ? { ok: true } : { ok: false, reason: "not connected to the broker" }],
      ["outbox", this.outbox.stats().degraded ? { ok: false, reason: "storage not writable" } : { ok: true }],
      ["commands", this.replay.durable ? { ok: true } : { ok: false, reason: "replay records cannot be stored" }],
    ];
    for (const { module, parts } of this.modules) if (parts.health) verdicts.push([module.name, parts.health()]);
    return this.health.healthy(verdicts);
  }

  private context(module: Module): ModuleContext {
    const { settings, clock, logger } = this.o;
    return {
      config: () => settings.current().config,
      settings,
      clock,
      logger: logger.child({ component: module.name }),
      session: this.session,
      topics: this.topics,
      send: (message) => this.outbox.send(message),
      commit: () => this.outbox.commit(),
      retained: this.retained,
      direct: this.direct,
      alarm: (type, body) => this.alarms.raise(type, body),
      latest: this.latest,
      health: () => this.healthy(),
      metrics: this.metrics,
      heartbeat: (name, boundMs) => this.health.heartbeat(`${module.name}.${name}`, boundMs),
      collectors: () => [...this.kernelCollectors, ...this.modules.flatMap((m) => m.parts.collectors ?? [])],
      describe: () => this.describe(),
      restart: (delayMs, reply) => this.restart(delayMs, reply),
      env: this.o.env ?? {},
      models: () => this.modules.find((m) => m.parts.models)?.parts.models,
      vitals: () => ({
        alive: this.health.alive(),
        connected: this.link.connected,
        queued: this.outbox.stats().queued,
      }),
      setLogLevel: (level) => {
        const previous = logger.level;
        this.o.setLogLevel?.(level);
        return { previous, level };
      },
    };
  }

  private readonly listeners = new Map<string, (payload: Buffer) => void>();
  private readonly direct = {
    listen: (topic: string, handler: (payload: Buffer) => void) => {
      this.ownTopic(topic);
      if (this.listeners.size === 0) {
        this.link.on("message", (t: string, payload: Buffer) => {
          const listener = this.listeners.get(t);
          if (!listener) return;
          try {
            listener(payload);
          } catch (err) {
            this.o.logger.error({ err, topic: t }, "a direct message handler failed");
          }
        });
      }
      this.listeners.set(topic, handler);
      this.link.subscribe(topic);
    },
    publish: (topic: string, payload: string | Buffer) => {
      this.ownTopic(topic);
      return this.link.publish(topic, payload, { qos: 1 });
    },
  };

  private ownTopic(topic: string): void {
    if (!topic.startsWith(`${this.topics.status.slice(0, -"status".length)}`) || /[+#]/.test(topic)) {
      throw new Error(`${topic} is not one of the device's own topics`);
    }
  }

  /** The kernel's own figures in every telemetry sample. */
  private readonly kernelCollectors: Collector[] = [
    { name: "outbox", collect: async () => this.outbox.stats() },
    { name: "commands", collect: async () => ({ ...this.commands.counts }) },
    { name: "agent", collect: async () => agentMetrics() },
  ];

  private async doStop(budgetMs: number): Promise<void> {
    const { logger } = this.o;
    logger.info("agent stopping");
    const reversed = [...this.modules].reverse();
    // One owner of the budget. The reserve is kept for the outbox commit, `offline` and the closing steps;
    // the drain and the flush share the rest, each getting what the steps before it left.
    const end = performance.now() + budgetMs;
    const reserve = Math.min(STOP_RESERVE_MS, budgetMs * 0.3);
    const left = () => Math.max(0, Math.floor(end - reserve - performance.now()));
    // A failing step must not keep the ones after it from running.
    const step = async (name: string, fn: () => unknown) => {
      this.trace(name);
      try {
        await fn();
      } catch (err) {
        logger.error({ err, step: name }, "stop step failed");
      }
    };
    // A drain step that outlasts the budget is left behind (a command or task stuck in native code, a bug):
    // what it would have done is lost, what everything else must do is not.
    const bounded = async (name: string, work: unknown, signal: AbortSignal) => {
      const cut = await Promise.race([Promise.resolve(work).then(() => false), abortPromise(signal).then(() => true)]);
      if (cut) logger.warn({ step: name }, "stop step cut short: the shutdown budget is spent");
    };
    await step("quiesce:commands", () => this.commands.quiesce());
    for (const { module, parts } of reversed) await step(`quiesce:${module.name}`, () => parts.quiesce?.());
    const drain = AbortSignal.timeout(left());
    await step("drain:commands", () => bounded("drain:commands", this.commands.stop(), drain));
    for (const { module, parts } of reversed) {
      await step(`drain:${module.name}`, () => bounded(`drain:${module.name}`, parts.drain?.(drain), drain));
    }
    await step("flush:outbox", async () => {
      if (!this.link.connected) return;
      const flushSignal = AbortSignal.timeout(left());
      await this.outbox.flush(flushSignal);
      if (flushSignal.aborted) logger.warn({ queued: this.outbox.stats().queued }, "outbox not flushed in time");
    });
    // What is still unacknowledged goes to disk before anything else can hang.
    await step("commit:outbox", () => this.outbox.commit());
    this.controller.abort();
    // The link publishes "offline" and disconnects; then module components, then the outbox closes.
    await step("offline+disconnect:mqtt", () => this.link.stop());
    for (const component of [...this.started].reverse()) {
      if (component === this.link || component === this.outbox || component === this.commands) continue;
      await step(`stop:${component.name}`, () => component.stop());
    }
    await step("stop:outbox", () => this.outbox.stop());
    this.replay.close();
    this.retained.close();
    this.health.close();
    logger.info({ sent: this.outbox.stats().sent, stored: this.outbox.stats().stored }, "agent stopped");
  }

  /** Brings the kernel and the modules to a new configuration snapshot (the hot-reloadable keys). */
  private adapt(next: Snapshot, previous: Snapshot): void {
    const { logger } = this.o;
    const [a, b] = [previous.config, next.config];
    try {
      if (a.log.level !== b.log.level) this.o.setLogLevel?.(b.log.level);
      if (a.commands.allowUnsigned !== b.commands.allowUnsigned) warnIfUnsigned(b.commands.allowUnsigned, logger);
      // The retained status carries the config version and hash: republish it so the fleet view is current.
      this.republishStatus();
    } catch (err) {
      logger.error({ err }, "could not adapt to the new configuration");
    }
    for (const { module, parts } of this.modules) {
      try {
        parts.onConfigChange?.(b, a);
      } catch (err) {
        logger.error({ err, module: module.name }, "a module could not adapt to the new configuration");
      }
    }
  }

  private restart(delayMs: number, reply?: PendingReply): void {
    if (reply) {
      // Persisted before acting: the next process answers the request with the real outcome.
      const record = { reply, session: this.session, ts: this.o.clock.now() };
      try {
        writeFileAtomically(this.pendingPath(), `${JSON.stringify(record)}\n`);
      } catch (err) {
        this.o.logger.error({ err: errorMessage(err) }, "could not keep the restart request; no final reply will come");
      }
    }
    void sleep(delayMs).then(() => this.requestRestart());
  }

  private sendPendingReplies(): void {
    let record: { reply: PendingReply; session: string };
    try {
      record = JSON.parse(readFileSync(this.pendingPath(), "utf8")) as typeof record;
    } catch {
      return;
    }
    rmSync(this.pendingPath(), { force: true });
    const result = { restarted: true, previousSession: record.session, session: this.session, version: VERSION };
    this.commands.finish(record.reply, { state: "succeeded", result });
    this.o.logger.info({ id: record.reply.id }, "restart completed; final reply sent");
  }

  private pendingPath(): string {
    return join(this.o.settings.booted.config.state.dir, PENDING_FILE);
  }

  private reportDroppedOverrides(): void {
    const dropped = this.o.settings.droppedOverrides;
    if (dropped.length === 0) return;
    // Only a tampered or pre-0.2 device has these: say so where the fleet is watched, not only in the journal.
    this.o.logger.error({ dropped }, "stored config overrides of local-only or trust keys were dropped");
    this.alarms.raise("config-overrides", {
      active: true,
      dropped,
      reason: "remote overrides of protected keys dropped",
    });
  }

  private replayAlarm(durable: boolean): void {
    const reason = "command replay records cannot be stored: state-changing commands are refused";
    this.alarms.raise("replay-store", { active: !durable, ...(durable ? {} : { reason }) });
  }

  /** What the modules add to the status message; a module that fails here must not cost the birth. */
  private statusExtras(): Record<string, unknown> {
    const extra: Record<string, unknown> = {};
    for (const { module, parts } of this.modules) {
      try {
        Object.assign(extra, parts.status?.());
      } catch (err) {
        this.o.logger.error({ err, module: module.name }, "a module's status fields failed");
      }
    }
    return extra;
  }

  private republishStatus(): void {
    if (!this.link.connected) return;
    const status = this.link.birthMessage();
    this.link.publish(status.topic, status.payload, { qos: 1, retain: true }).catch((err: unknown) => {
      this.o.logger.warn({ err }, "could not republish the status");
    });
  }

  /** Rolls the event-loop delay window; a housekeeping wait must not keep the process alive on its own. */
  private async housekeeping(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      await sleep(5000, signal, { unref: true });
      this.health.roll();
    }
  }

  private trace(step: string): void {
    this.o.trace?.(step);
  }
}
