import { randomUUID } from "node:crypto";
import { Commands } from "./commands/commands.ts";
import { durationMs } from "./config/duration.ts";
import type { Config } from "./config/schema.ts";
import { sizeBytes } from "./config/size.ts";
import type { Clock } from "./core/clock.ts";
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
  config: Config;
  configHash: string;
  logger: Logger;
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
  private readonly options: AgentOptions;
  private readonly controller = new AbortController();
  private readonly started: Component[] = [];
  private stopping: Promise<void> | undefined;

  constructor(options: AgentOptions) {
    this.options = options;
    const { config, logger, clock } = options;
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
        configHash: options.configHash,
      }),
    });

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

    this.commands = new Commands({
      source: this.link,
      commandPrefix: `${config.mqtt.topicPrefix}/${config.device.id}/cmd`,
      reply: (reply) => this.outbox.send({ ...reply, priority: "result" }),
      allowUnsigned: () => config.commands.allowUnsigned,
      clock,
      logger: logger.child({ component: "commands" }),
    });
    if (config.commands.allowUnsigned) {
      logger.warn("commands.allowUnsigned is true: anyone who can publish on the broker can command this device");
    }

    this.telemetry = new Telemetry({
      collectors: options.collectors ?? systemCollectors(),
      intervalMs: () => durationMs(config.telemetry.interval),
      timeoutMs: () => durationMs(config.telemetry.collectorTimeout),
      extra: () => ({ outbox: this.outbox.stats(), agent: agentMetrics() }),
      publish: (sample) => {
        const body: Record<string, unknown> = { metrics: sample.metrics };
        if (Object.keys(sample.errors).length > 0) body.errors = sample.errors;
        this.outbox.send({ topic: topics.telemetry, priority: "telemetry", body });
      },
      logger: logger.child({ component: "telemetry" }),
    });
  }

  async start(): Promise<void> {
    const { logger, config } = this.options;
    logger.info(
      { device: config.device.id, session: this.session, version: VERSION, url: config.mqtt.url },
      "agent starting",
    );
    // The outbox opens its store and the command topics are registered before the link connects.
    for (const component of [this.outbox, this.commands, this.link, this.telemetry]) {
      await component.start(this.controller.signal);
      this.started.push(component);
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
    logger.info({ sent: this.outbox.stats().sent, stored: this.outbox.stats().stored }, "agent stopped");
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
