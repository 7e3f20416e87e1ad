import { randomUUID } from "node:crypto";
import { uptime } from "node:os";
import { type BuiltinHost, builtinCommands, type LogLevel } from "./commands/builtins.ts";
import { allows, type CommandPolicy, Commands, grantsTrust } from "./commands/commands.ts";
import { ReplayGuard } from "./commands/replay.ts";
import { durationMs } from "./config/duration.ts";
import { formatProblems, redact } from "./config/load.ts";
import { sizeBytes } from "./config/size.ts";
import type { ConfigStore, Snapshot } from "./config/store.ts";
import { type Clock, sleep } from "./core/clock.ts";
import type { Component } from "./core/lifecycle.ts";
import type { Logger } from "./core/logger.ts";
import { type LinkMessage, MqttLink } from "./mqtt/link.ts";
import { deviceTopics } from "./mqtt/topics.ts";
import { Outbox } from "./outbox/outbox.ts";
import { clockSyncProbe } from "./system/clock-sync.ts";
import { type Collector, systemCollectors } from "./telemetry/collectors.ts";
import { Telemetry } from "./telemetry/telemetry.ts";
import { VERSION } from "./version.ts";

export interface AgentOptions {
  settings: ConfigStore;
  logger: Logger;
  /** Changes the level of the logger and all its children (log.level, config reload). */
  setLogLevel?: (level: LogLevel) => void;
  clock: Clock;
  collectors?: Collector[];
  clockSynced?: () => boolean;
}

/**
 * The composition root: builds the components, wires them through small interfaces, starts them in order
 * and stops them in reverse (stop intake, flush the outbox, publish `offline`, disconnect).
 */
export class Agent {
  readonly session = randomUUID();
  readonly link: MqttLink;
  readonly outbox: Outbox;
  readonly telemetry: Telemetry;
  readonly commands: Commands;
  /** Resolves when the `restart` command asks the process to stop and be started again. */
  readonly restartRequested: Promise<void>;
  private requestRestart: () => void = () => {};
  private readonly replay: ReplayGuard;
  private readonly options: AgentOptions;
  private readonly controller = new AbortController();
  private readonly started: Component[] = [];
  private stopping: Promise<void> | undefined;
  private readonly startedAt: number;
  private readonly statusMessage: (state: "online" | "offline" | "lost") => LinkMessage;

  constructor(options: AgentOptions) {
    this.options = options;
    const { settings, logger, clock } = options;
    // Restart-only parts (device, mqtt, outbox, state) are built from the snapshot at start; the rest reads
    // `settings.current()` each time it needs a value, so a reload reaches it without a restart.
    const { config } = settings.current();
    const live = () => settings.current().config;
    this.startedAt = clock.mono();
    this.restartRequested = new Promise((resolve) => {
      this.requestRestart = resolve;
    });
    const topics = deviceTopics(config.mqtt.topicPrefix, config.device.id);
    const clockSynced = options.clockSynced ?? clockSyncProbe();

    const status = (state: "online" | "offline" | "lost"): LinkMessage => ({
      topic: topics.status,
      qos: 1,
      retain: true,
      payload: JSON.stringify({
        state,
        session: this.session,
        version: VERSION,
        ts: clock.now(),
        mono: Math.round(clock.mono()),
        clockSynced: clockSynced(),
        device: config.device.id,
        arch: process.arch,
        protocolVersion: this.link.protocolVersion,
        configVersion: settings.current().version,
        configHash: settings.current().hash,
        // "unavailable": commands that change state are refused until state.dir can be written.
        replayStore: this.replay.durable ? "ok" : "unavailable",
      }),
    });

    this.statusMessage = status;
    this.link = new MqttLink({
      url: config.mqtt.url,
      protocolVersion: config.mqtt.protocolVersion,
      clientId: config.mqtt.clientId ?? `outpost-${config.device.id}`,
      username: config.mqtt.username,
      password: config.mqtt.password,
      ca: config.mqtt.ca,
      cert: config.mqtt.cert,
      key: config.mqtt.key,
      rejectUnauthorized: config.mqtt.rejectUnauthorized,
      keepaliveMs: durationMs(config.mqtt.keepalive),
      connectTimeoutMs: durationMs(config.mqtt.connectTimeout),
      reconnectMinMs: durationMs(config.mqtt.reconnectMin),
      reconnectMaxMs: durationMs(config.mqtt.reconnectMax),
      maxPacketSize: sizeBytes(config.mqtt.maxPacketSize),
      will: () => status("lost"),
      birth: () => status("online"),
      farewell: () => status("offline"),
      logger: logger.child({ component: "mqtt" }),
    });

    this.outbox = new Outbox({
      transport: this.link,
      clock,
      session: this.session,
      clockSynced,
      logger: logger.child({ component: "outbox" }),
      dir: config.state.dir,
      alarmTopic: topics.alarm("outbox-storage"),
      maxBytes: sizeBytes(config.outbox.maxBytes),
      ttlMs: durationMs(config.outbox.ttl),
      commitIntervalMs: durationMs(config.outbox.commitInterval),
      commitMessages: config.outbox.commitMessages,
      window: config.outbox.window,
      maxPacketSize: config.outbox.maxPacketSize,
    });

    this.replay = new ReplayGuard({
      dir: config.state.dir,
      logger: logger.child({ component: "commands" }),
      now: clock.now(),
    });
    const policies = new WeakMap<Snapshot, CommandPolicy>();
    const policy = () => {
      const snapshot = settings.current();
      let p = policies.get(snapshot);
      if (!p) {
        const c = snapshot.config.commands;
        p = {
          trustedKeys: c.trustedKeys,
          allowUnsigned: c.allowUnsigned,
          skewMs: durationMs(c.clockSkew),
          maxValidityMs: durationMs(c.maxValidity),
        };
        policies.set(snapshot, p);
      }
      return p;
    };
    this.commands = new Commands({
      source: this.link,
      topicPrefix: config.mqtt.topicPrefix,
      deviceId: config.device.id,
      groups: config.device.groups,
      reply: (reply) => this.outbox.send({ ...reply, body: { ...reply.body }, priority: "result" }),
      policy,
      definitions: builtinCommands(this.builtinHost()),
      replay: this.replay,
      clock,
      logger: logger.child({ component: "commands" }),
    });
    warnIfUnsigned(config.commands.allowUnsigned, logger);

    this.telemetry = new Telemetry({
      collectors: options.collectors ?? systemCollectors(),
      intervalMs: () => durationMs(live().telemetry.interval),
      timeoutMs: () => durationMs(live().telemetry.collectorTimeout),
      extra: () => ({ outbox: this.outbox.stats(), commands: { ...this.commands.counts }, agent: agentMetrics() }),
      publish: (sample) => {
        const body: Record<string, unknown> = { metrics: sample.metrics };
        if (Object.keys(sample.errors).length > 0) body.errors = sample.errors;
        this.outbox.send({ topic: topics.telemetry, priority: "telemetry", body });
      },
      logger: logger.child({ component: "telemetry" }),
    });

    settings.on("change", (next, previous) => this.adapt(next, previous));
    this.replay.onDurabilityChange((durable) => {
      logger[durable ? "info" : "error"](
        durable ? "command replay store writable again" : "command replay store failed; refusing state changes",
      );
      this.replayAlarm(durable);
      this.republishStatus();
    });
  }

  private replayAlarm(durable: boolean): void {
    const { config } = this.options.settings.current();
    this.outbox.send({
      topic: deviceTopics(config.mqtt.topicPrefix, config.device.id).alarm("replay-store"),
      priority: "alarm",
      body: {
        alarm: "replay-store",
        active: !durable,
        ...(durable ? {} : { reason: "command replay records cannot be stored: state-changing commands are refused" }),
      },
    });
  }

  private republishStatus(): void {
    if (!this.link.connected) return;
    const status = this.statusMessage("online");
    this.link.publish(status.topic, status.payload, { qos: 1, retain: true }).catch((err: unknown) => {
      this.options.logger.warn({ err }, "could not republish the status");
    });
  }

  /** Brings the running components to a new configuration snapshot (the hot-reloadable keys). */
  private adapt(next: Snapshot, previous: Snapshot): void {
    const { logger } = this.options;
    try {
      const [a, b] = [previous.config, next.config];
      if (a.log.level !== b.log.level) this.options.setLogLevel?.(b.log.level);
      if (a.telemetry.interval !== b.telemetry.interval) this.telemetry.wake();
      if (a.commands.allowUnsigned !== b.commands.allowUnsigned) warnIfUnsigned(b.commands.allowUnsigned, logger);
      // The retained status carries the config version and hash: republish it so the fleet view is current.
      this.republishStatus();
    } catch (err) {
      logger.error({ err }, "could not adapt to the new configuration");
    }
  }

  /** What the built-in commands may do to the rest of the agent. */
  private builtinHost(): BuiltinHost {
    const { settings, clock, logger } = this.options;
    return {
      describe: () => {
        const snapshot = settings.current();
        return {
          device: snapshot.config.device.id,
          groups: snapshot.config.device.groups,
          version: VERSION,
          node: process.version,
          platform: process.platform,
          arch: process.arch,
          session: this.session,
          protocolVersion: this.link.protocolVersion,
          capabilities: { commands: this.commands.commandNames, signedCommands: true, outbox: "sqlite" },
          commands: { replayStore: this.replay.durable ? "ok" : "unavailable", ...this.commands.counts },
          config: {
            version: snapshot.version,
            hash: snapshot.hash,
            restartRequired: settings.restartRequired(),
          },
          uptime: { agentMs: Math.round(clock.mono() - this.startedAt), systemS: Math.round(uptime()) },
        };
      },
      telemetryNow: async () => {
        const sample = await this.telemetry.sample();
        return { metrics: sample.metrics, ...(Object.keys(sample.errors).length ? { errors: sample.errors } : {}) };
      },
      configGet: () => {
        const snapshot = settings.current();
        return { version: snapshot.version, hash: snapshot.hash, config: redact(snapshot.config) };
      },
      configSet: (patch, caller) => {
        const result = settings.patch(patch, {
          trust: caller !== undefined && grantsTrust(caller.allow),
          // A remote change must never lock the operators out for good: some key must keep config.set.
          guard: (next) =>
            next.commands.trustedKeys.some((k) => allows(k.allow, "config.set"))
              ? undefined
              : {
                  code: "CONFIG_LOCKOUT",
                  problems: [
                    {
                      path: "commands.trustedKeys",
                      expected: "expected at least one key allowed to run config.set",
                      found: "none left",
                    },
                  ],
                },
        });
        if (!result.ok) {
          // An invalid patch is a bad parameter of this command: name the path inside it.
          const invalid = result.code === "CONFIG_INVALID";
          const problems = result.problems.map((p) => (invalid ? { ...p, path: `params.patch.${p.path}` } : p));
          return { ok: false, code: invalid ? "BAD_PARAMS" : result.code, problems: formatProblems(problems) };
        }
        const { snapshot, changed, restartRequired } = result;
        return { ok: true, version: snapshot.version, hash: snapshot.hash, changed, restartRequired };
      },
      setLogLevel: (level) => {
        const previous = logger.level;
        this.options.setLogLevel?.(level);
        return { previous, level };
      },
      restart: (delayMs) => {
        logger.warn({ delayMs }, "restart requested by command");
        void sleep(delayMs).then(() => this.requestRestart());
      },
    };
  }

  async start(): Promise<void> {
    const { logger, settings } = this.options;
    const { config } = settings.current();
    logger.info(
      { device: config.device.id, session: this.session, version: VERSION, url: config.mqtt.url },
      "agent starting",
    );
    // The outbox opens its store and the command topics are registered before the link connects.
    for (const component of [this.outbox, this.commands, this.link, this.telemetry]) {
      await component.start(this.controller.signal);
      this.started.push(component);
    }
    if (!this.replay.durable) this.replayAlarm(false);
    const dropped = settings.droppedOverrides;
    if (dropped.length > 0) {
      // Only a tampered or pre-0.2 device has these: say so where the fleet is watched, not only in the journal.
      logger.error({ dropped }, "stored config overrides of local-only or trust keys were dropped");
      this.outbox.send({
        topic: deviceTopics(config.mqtt.topicPrefix, config.device.id).alarm("config-overrides"),
        priority: "alarm",
        body: {
          alarm: "config-overrides",
          active: true,
          dropped,
          reason: "remote overrides of protected keys dropped",
        },
      });
    }
  }

  /**
   * Drains and stops everything, in reverse start order. Waits for the outbox to flush for at most
   * `flushMs`, and only while the broker is reachable: an unreachable broker must not hold up a stop.
   */
  stop(flushMs = 5000): Promise<void> {
    this.stopping ??= this.doStop(flushMs);
    return this.stopping;
  }

  private async doStop(flushMs: number): Promise<void> {
    const { logger } = this.options;
    logger.info("agent stopping");
    // Each stop is bounded by its component (the link gives up on the broker after 2 s) and the whole drain by
    // shutdown.deadline in the caller; a failing stop must not keep the ones after it from running.
    const stop = async (component: Component) => {
      if (!this.started.includes(component)) return;
      try {
        await component.stop();
      } catch (err) {
        logger.error({ err, component: component.name }, "component did not stop cleanly");
      }
    };
    // Stop intake first, so that the flush has an end.
    await stop(this.commands);
    await stop(this.telemetry);
    if (this.link.connected) {
      const flushSignal = AbortSignal.timeout(flushMs);
      await this.outbox.flush(flushSignal);
      if (flushSignal.aborted) logger.warn({ queued: this.outbox.stats().queued }, "outbox not flushed in time");
    }
    // What is still unacknowledged goes to disk before anything else can hang.
    this.outbox.commit();
    this.controller.abort();
    // The link publishes "offline" and disconnects; then the outbox deletes late acks and closes.
    await stop(this.link);
    await stop(this.outbox);
    this.replay.close();
    logger.info({ sent: this.outbox.stats().sent, stored: this.outbox.stats().stored }, "agent stopped");
  }
}

function warnIfUnsigned(allowUnsigned: boolean, logger: Logger): void {
  if (allowUnsigned) {
    logger.warn("commands.allowUnsigned is true: anyone who can publish on the broker can command this device");
  }
}

/** The agent's own footprint, so that a fleet shows which devices it costs too much on. */
function agentMetrics(): Record<string, number> {
  const mem = process.memoryUsage();
  const cpu = process.cpuUsage();
  return {
    rss: mem.rss,
    heapUsed: mem.heapUsed,
    cpuUserMs: Math.round(cpu.user / 1000),
    cpuSystemMs: Math.round(cpu.system / 1000),
  };
}
