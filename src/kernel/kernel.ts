import { randomUUID } from "node:crypto";
import { uptime } from "node:os";
import type { LevelWithSilent } from "pino";
import { Registry } from "prom-client";
import { Commands, type PendingReply } from "../commands/commands.ts";
import { ReplayGuard } from "../commands/replay.ts";
import type { ConfigStore, Snapshot } from "../config/store.ts";
import { type Clock, sleep } from "../core/clock.ts";
import type { Component } from "../core/lifecycle.ts";
import { LogRing } from "../core/log-ring.ts";
import type { Logger } from "../core/logger.ts";
import { brokerHost } from "../core/patterns.ts";
import { MqttLink } from "../mqtt/link.ts";
import { type DeviceTopics, deviceTopics } from "../mqtt/topics.ts";
import { Outbox } from "../outbox/outbox.ts";
import { clockSyncProbe } from "../system/clock-sync.ts";
import { VERSION } from "../version.ts";
import { Alarms } from "./alarms.ts";
import { Direct } from "./direct.ts";
import { Health, type HealthReport } from "./health.ts";
import { type DeviceIdentity, deviceIdentity } from "./identity.ts";
import { LatestValues } from "./latest.ts";
import type { Module, ModuleContext, ModuleParts, Verdict } from "./module.ts";
import { PendingReplies } from "./pending-replies.ts";
import { RetainedState } from "./retained.ts";
import { stopInOrder } from "./shutdown.ts";
import { answerSigner, signedStatus } from "./status.ts";
import type { TelemetryPort } from "./telemetry-port.ts";
import {
  adaptModules,
  commandPolicy,
  kernelCollectors,
  linkOptions,
  registerKernelMetrics,
  replayAlarm,
  reportDroppedOverrides,
  sectionOf,
  warnIfUnsigned,
} from "./wiring.ts";

export interface KernelOptions {
  configStore: ConfigStore;
  logger: Logger;
  /** Changes the level of the logger and all its children. */
  setLogLevel?: (level: LevelWithSilent) => void;
  /** The logger's ring of recent lines (for the diagnostics module); absent, an empty one. */
  logRing?: LogRing;
  clock: Clock;
  clockSynced?: () => boolean;
  modules: readonly Module[];
  /** The process environment (main.ts reads it; modules get it from their context). */
  env?: Readonly<Record<string, string | undefined>>;
  /** Told each step of start and stop as it happens, in order (tests assert the order). */
  trace?: (step: string) => void;
}

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
  /** The device's own key, made at its first start. */
  readonly identity: DeviceIdentity;
  /** Resolves when the `restart` command asks the process to stop and be started again. */
  readonly restartRequested: Promise<void>;
  private readonly requestRestart: () => void;
  private readonly o: KernelOptions;
  private readonly direct: Direct;
  private readonly pending: PendingReplies;
  private readonly modules: { module: Module; parts: ModuleParts }[] = [];
  private readonly controller = new AbortController();
  private readonly started: Component[] = [];
  private stopping: Promise<void> | undefined;
  private readonly startedAt: number;

  constructor(options: KernelOptions) {
    this.o = options;
    const { configStore, logger, clock } = options;
    // Restart-only parts (device, mqtt, outbox, state) are built from the snapshot at start; the rest reads
    // `configStore.current()` each time it needs a value, so a reload reaches it without a restart.
    const { config, typed } = configStore.current();
    this.startedAt = clock.mono();
    ({ promise: this.restartRequested, resolve: this.requestRestart } = Promise.withResolvers<void>());
    this.topics = deviceTopics(config.mqtt.topicPrefix, config.device.id);
    this.identity = deviceIdentity(config.state.dir, logger.child({ component: "identity" }));
    this.health = new Health(() => clock.mono());
    const clockSynced = options.clockSynced ?? clockSyncProbe();
    // Answers are signed with the device's own key (status.ts); groups: those subscribed at start (restart-only).
    const sign = answerSigner(this.identity.privateKey, config.device.id, this.topics, this.session);
    const status = (state: "online" | "offline" | "lost") =>
      signedStatus(sign, state, {
        topic: this.topics.status,
        session: this.session,
        clock,
        clockSynced,
        config: configStore.current(),
        groups: config.device.groups,
        protocolVersion: this.link.protocolVersion,
        replayStore: this.replay.durable,
        identity: this.identity,
        extra: () => this.statusExtras(),
      });
    this.link = new MqttLink({
      ...linkOptions(typed),
      will: () => status("lost"),
      birth: () => status("online"),
      farewell: () => status("offline"),
      now: () => clock.mono(),
      logger: logger.child({ component: "mqtt" }),
    });
    const commit = typed.outbox.commitInterval;
    this.outbox = new Outbox({
      transport: this.link,
      clock,
      session: this.session,
      clockSynced,
      logger: logger.child({ component: "outbox" }),
      dir: config.state.dir,
      alarmTopic: this.topics.alarm("outbox-storage"),
      onAlarm: (body) => this.alarms.retain("outbox-storage", body),
      maxBytes: typed.outbox.maxBytes,
      ttlMs: typed.outbox.ttl,
      commitIntervalMs: commit,
      commitMessages: config.outbox.commitMessages,
      window: config.outbox.window,
      maxPacketSize: config.outbox.maxPacketSize,
      heartbeat: this.health.heartbeat("outbox.commits", () => 3 * commit + 5000),
      sign: sign.outbox(() => this.telemetry()?.signed() === true),
    });
    const commandLog = logger.child({ component: "commands" });
    this.replay = new ReplayGuard({ dir: config.state.dir, logger: commandLog, now: clock.now() });
    this.commands = new Commands({
      source: this.link,
      topicPrefix: config.mqtt.topicPrefix,
      deviceId: config.device.id,
      groups: config.device.groups,
      reply: (reply) => this.outbox.send({ ...reply, body: { ...reply.body }, priority: "result" }),
      policy: commandPolicy(configStore),
      replay: this.replay,
      clock,
      logger: commandLog,
    });
    this.direct = new Direct(
      this.link,
      this.topics.status.slice(0, -"status".length),
      logger.child({ component: "direct" }),
    );
    this.pending = new PendingReplies(config.state.dir, logger);
    this.retained = new RetainedState(this.link, logger.child({ component: "retained" }), sign.retained);
    this.alarms = new Alarms({ send: (m) => this.outbox.send(m), retained: this.retained, topics: this.topics, clock });
    this.latest = new LatestValues((err) => logger.error({ err }, "a listener of the latest values failed"));
    this.commands.observe = registerKernelMetrics(this.metrics, {
      outbox: () => this.outbox.stats(),
      connected: () => this.link.connected,
      connects: () => this.link.connects,
      commands: () => this.commands.counts,
      configVersion: () => configStore.current().version,
      eventLoopDelayMs: () => this.health.eventLoopDelayMs(),
    });
    for (const module of options.modules) {
      const parts = module.create(this.context(module));
      this.commands.register(parts.commands ?? []);
      this.modules.push({ module, parts });
    }
    warnIfUnsigned(config.commands.allowUnsigned, logger);
    configStore.on("change", (next, previous) => this.adapt(next, previous));
    this.replay.onDurabilityChange((durable) => {
      logger[durable ? "info" : "error"](
        durable ? "command replay store writable again" : "command replay store failed; refusing state changes",
      );
      replayAlarm(this.alarms, durable);
      this.republishStatus();
    });
  }

  async start(): Promise<void> {
    const { logger, configStore } = this.o;
    const { config } = configStore.current();
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
      this.o.trace?.(`start:${component.name}`);
      await component.start(signal);
      this.started.push(component);
    }
    void this.housekeeping(signal);
    if (!this.replay.durable) replayAlarm(this.alarms, false);
    reportDroppedOverrides(this.o.configStore.droppedOverrides, this.o.logger, this.alarms);
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
    const snapshot = this.o.configStore.current();
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
      identity: {
        key: this.identity.publicKey,
        fingerprint: this.identity.fingerprint,
        created: this.identity.created,
        ephemeral: this.identity.ephemeral,
      },
      protocolVersion: this.link.protocolVersion,
      capabilities: {
        commands: this.commands.commandNames,
        modules: this.modules.map((m) => m.module.name),
        signedCommands: true,
        outbox: "sqlite",
      },
      commands: { replayStore: this.replay.durable ? "ok" : "unavailable", ...this.commands.counts },
      config: { version: snapshot.version, hash: snapshot.hash, restartRequired: this.o.configStore.restartRequired() },
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
    const { configStore, clock, logger } = this.o;
    return {
      config: () => sectionOf(module, configStore.current()),
      deviceId: configStore.booted.config.device.id,
      stateDir: configStore.booted.config.state.dir,
      broker: brokerHost(configStore.booted.config.mqtt.url),
      configStore,
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
      collectors: () => [
        ...kernelCollectors(this.outbox, this.commands),
        ...this.modules.flatMap((m) => m.parts.collectors ?? []),
      ],
      describe: () => this.describe(),
      restart: (delayMs, reply) => this.restart(delayMs, reply),
      env: this.o.env ?? {},
      models: () => this.modules.find((m) => m.parts.models)?.parts.models,
      workers: () => this.modules.find((m) => m.parts.workers)?.parts.workers,
      telemetry: () => this.telemetry(),
      vitals: () => ({
        alive: this.health.alive(),
        connected: this.link.connected,
        queued: this.outbox.stats().queued,
      }),
      logs: this.o.logRing ?? new LogRing(0),
      setLogLevel: (level) => {
        const previous = logger.level;
        this.o.setLogLevel?.(level);
        return { previous, level };
      },
    };
  }

  private async doStop(budgetMs: number): Promise<void> {
    const { logger, clock } = this.o;
    logger.info("agent stopping");
    await stopInOrder(
      {
        commands: this.commands,
        modules: this.modules,
        outbox: this.outbox,
        link: this.link,
        started: this.started,
        abort: () => this.controller.abort(),
        logger,
        trace: (step) => this.o.trace?.(step),
        now: () => clock.mono(),
      },
      budgetMs,
    );
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
    adaptModules(this.modules, next, previous, logger);
  }

  private restart(delayMs: number, reply?: PendingReply): void {
    // Persisted before acting: the next process answers the request with the real outcome.
    if (reply) this.pending.keep({ reply, session: this.session, ts: this.o.clock.now() });
    void sleep(delayMs).then(() => this.requestRestart());
  }

  private sendPendingReplies(): void {
    const record = this.pending.take();
    if (!record) return;
    const result = { restarted: true, previousSession: record.session, session: this.session, version: VERSION };
    this.commands.finish(record.reply, { state: "succeeded", result });
    this.o.logger.info({ id: record.reply.id }, "restart completed; final reply sent");
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

  /** The telemetry module's port, when it runs. */
  private readonly telemetry = (): TelemetryPort | undefined =>
    this.modules.find((m) => m.parts.telemetry)?.parts.telemetry;
}
