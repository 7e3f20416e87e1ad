import type { Registry } from "prom-client";
import { Gauge, Histogram } from "prom-client";
import type { CommandPolicy, Commands } from "../commands/commands.ts";
import type { ConfigStore, Snapshot, TypedConfig } from "../config/store.ts";
import type { Logger } from "../core/logger.ts";
import type { Outbox, OutboxStats } from "../outbox/outbox.ts";
import type { Alarms } from "./alarms.ts";
import type { Collector, Module, ModuleParts } from "./module.ts";
import { type Series, scrapedFamily } from "./scraped.ts";
import type { KernelMetrics } from "./telemetry-port.ts";

/** What the kernel's metrics read. */
export interface KernelFigures {
  outbox(): OutboxStats;
  connected(): boolean;
  connects(): number;
  commands(): { received: number; executed: number; refused: number; suppressed: number };
  configVersion(): number;
  eventLoopDelayMs(): number;
}

/** A counter whose value is read from elsewhere when scraped. */
function readCounter(registry: Registry, name: string, help: string, labels: string[], read: () => Series): void {
  scrapedFamily({ registry, type: "counter", name, help, labels, read });
}

/**
 * The kernel's own metrics in the one registry, read when scraped. Returns the observer of command durations
 * (the router calls it as each command ends).
 */
export function registerKernelMetrics(
  registry: Registry,
  f: KernelFigures,
): (command: string, state: "succeeded" | "failed", seconds: number) => void {
  const registers = [registry];
  const gauge = (name: string, help: string, read: () => number) =>
    new Gauge({
      name,
      help,
      registers,
      collect() {
        this.set(read());
      },
    });
  gauge("outpost_outbox_queued_messages", "Messages not yet acknowledged by the broker", () => f.outbox().queued);
  gauge("outpost_outbox_queued_bytes", "Bytes of the messages not yet acknowledged", () => f.outbox().bytes);
  readCounter(
    registry,
    "outpost_outbox_sent_messages_total",
    "Messages acknowledged by the broker since start",
    [],
    () => [[{}, f.outbox().sent]],
  );
  readCounter(
    registry,
    "outpost_outbox_dropped_messages_total",
    "Messages dropped by policy since start, by class and reason",
    ["class", "reason"],
    () =>
      Object.entries(f.outbox().dropped).flatMap(([priority, reasons]) =>
        Object.entries(reasons).map(([reason, n]): [Record<string, string>, number] => [
          { class: priority, reason },
          n,
        ]),
      ),
  );
  gauge("outpost_outbox_degraded", "1 while the outbox database cannot be written", () =>
    f.outbox().degraded ? 1 : 0,
  );
  gauge("outpost_mqtt_connected", "1 while connected to the broker", () => (f.connected() ? 1 : 0));
  readCounter(
    registry,
    "outpost_mqtt_connects_total",
    "Connections made since start (the first and every reconnect)",
    [],
    () => [[{}, f.connects()]],
  );
  readCounter(registry, "outpost_commands_total", "Command requests since start, by outcome", ["outcome"], () =>
    Object.entries(f.commands()).map(([outcome, n]): [Record<string, string>, number] => [{ outcome }, n]),
  );
  const durations = new Histogram({
    name: "outpost_command_duration_seconds",
    help: "Time from start to the final reply of executed commands",
    labelNames: ["command", "state"],
    buckets: [0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10, 60],
    registers,
  });
  gauge("outpost_config_version", "Configuration version (applied changes + 1)", () => f.configVersion());
  gauge(
    "outpost_event_loop_delay_seconds",
    "Worst event-loop delay of the last window",
    () => f.eventLoopDelayMs() / 1000,
  );
  gauge("outpost_resident_memory_bytes", "Resident set size of the agent", () => process.memoryUsage.rss());
  gauge("outpost_heap_used_bytes", "JavaScript heap in use", () => process.memoryUsage().heapUsed);
  readCounter(registry, "outpost_cpu_seconds_total", "CPU time used by the agent, by mode", ["mode"], () => {
    const cpu = process.cpuUsage();
    return [
      [{ mode: "user" }, cpu.user / 1e6],
      [{ mode: "system" }, cpu.system / 1e6],
    ];
  });
  return (command, state, seconds) => durations.observe({ command, state }, seconds);
}

export function linkOptions(config: TypedConfig) {
  const m = config.mqtt;
  return {
    url: m.url,
    failover: m.failover,
    protocolVersion: m.protocolVersion,
    clientId: m.clientId ?? `outpost-${config.device.id}`,
    username: m.username,
    password: m.password,
    ca: m.ca,
    cert: m.cert,
    key: m.key,
    rejectUnauthorized: m.rejectUnauthorized,
    keepaliveMs: m.keepalive,
    connectTimeoutMs: m.connectTimeout,
    reconnectMinMs: m.reconnectMin,
    reconnectMaxMs: m.reconnectMax,
    maxPacketSize: m.maxPacketSize,
    sessionExpiryS: Math.round(m.sessionExpiry / 1000),
    persistentSession311: m.persistentSession311,
  };
}

/** The command policy of the current snapshot (its durations already parsed, in the typed view). */
export function commandPolicy(configStore: ConfigStore): () => CommandPolicy {
  return () => {
    const c = configStore.current().typed.commands;
    return {
      trustedKeys: c.trustedKeys,
      allowUnsigned: c.allowUnsigned,
      skewMs: c.clockSkew,
      maxValidityMs: c.maxValidity,
    };
  };
}

export function warnIfUnsigned(allowUnsigned: boolean, logger: Logger): void {
  if (allowUnsigned) {
    logger.warn("commands.allowUnsigned is true: anyone who can publish on the broker can command this device");
  }
}

/** The agent's own footprint, so that a fleet shows which devices it costs too much on. */
export function agentMetrics(): KernelMetrics["agent"] {
  const mem = process.memoryUsage();
  const cpu = process.cpuUsage();
  return {
    rss: mem.rss,
    heapUsed: mem.heapUsed,
    cpuUserMs: Math.round(cpu.user / 1000),
    cpuSystemMs: Math.round(cpu.system / 1000),
  };
}

/** A module's own section of a snapshot, typed (durations in ms, sizes in bytes); undefined when it has none. */
export function sectionOf(module: Module, snapshot: Snapshot): unknown {
  const key = module.config?.key;
  return key === undefined ? undefined : (snapshot.typed as Readonly<Record<string, unknown>>)[key];
}

/** The kernel's own figures in every telemetry sample (KernelMetrics). */
export function kernelCollectors(outbox: Outbox, commands: Commands): Collector[] {
  return [
    { name: "outbox", collect: async () => outbox.stats() },
    { name: "commands", collect: async () => ({ ...commands.counts }) },
    { name: "agent", collect: async () => agentMetrics() },
  ];
}

/**
 * Stored overrides of local-only or trust keys dropped at start: only a tampered or pre-0.2 device has them,
 * so it is said where the fleet is watched (an alarm), not only in the journal.
 */
export function reportDroppedOverrides(dropped: readonly string[], logger: Logger, alarms: Alarms): void {
  if (dropped.length === 0) return;
  logger.error({ dropped }, "stored config overrides of local-only or trust keys were dropped");
  alarms.raise("config-overrides", { active: true, dropped, reason: "remote overrides of protected keys dropped" });
}

/** Hands each module its own section of a new snapshot; one that fails is logged, the others still adapt. */
export function adaptModules(
  modules: readonly { module: Module; parts: ModuleParts }[],
  next: Snapshot,
  previous: Snapshot,
  logger: Logger,
): void {
  for (const { module, parts } of modules) {
    try {
      parts.onConfigChange?.(sectionOf(module, next), sectionOf(module, previous));
    } catch (err) {
      logger.error({ err, module: module.name }, "a module could not adapt to the new configuration");
    }
  }
}

/** The replay store's alarm: raised while state-changing commands are refused for want of it. */
export function replayAlarm(alarms: Alarms, durable: boolean): void {
  const reason = "command replay records cannot be stored: state-changing commands are refused";
  alarms.raise("replay-store", { active: !durable, ...(durable ? {} : { reason }) });
}
