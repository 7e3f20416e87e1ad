import type { Registry } from "prom-client";
import { Gauge } from "prom-client";
import type { CommandPolicy } from "../commands/commands.ts";
import { durationMs } from "../config/duration.ts";
import { sizeBytes } from "../config/size.ts";
import type { ConfigStore, Snapshot } from "../config/store.ts";
import type { Logger } from "../core/logger.ts";
import type { OutboxStats } from "../outbox/outbox.ts";
import type { Config } from "../schema.ts";

/** What the kernel's gauges read. */
export interface KernelFigures {
  outbox(): OutboxStats;
  connected(): boolean;
  connects(): number;
  refused(): number;
  configVersion(): number;
  eventLoopDelayMs(): number;
}

/** The kernel's own metrics in the one registry (read when scraped). */
export function registerKernelMetrics(registry: Registry, f: KernelFigures): void {
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
  gauge("outpost_outbox_queued", "Messages not yet acknowledged by the broker", () => f.outbox().queued);
  gauge("outpost_outbox_bytes", "Bytes of the messages not yet acknowledged", () => f.outbox().bytes);
  gauge("outpost_outbox_sent", "Messages acknowledged by the broker since start", () => f.outbox().sent);
  gauge("outpost_mqtt_connected", "1 while connected to the broker", () => (f.connected() ? 1 : 0));
  gauge("outpost_mqtt_connects", "Connections made since start", () => f.connects());
  gauge("outpost_commands_refused", "Command requests refused since start", () => f.refused());
  gauge("outpost_config_version", "Configuration version (applied changes + 1)", () => f.configVersion());
  gauge("outpost_event_loop_delay_ms", "Worst event-loop delay of the last window", () => f.eventLoopDelayMs());
}

export function linkOptions(config: Config) {
  const m = config.mqtt;
  return {
    url: m.url,
    protocolVersion: m.protocolVersion,
    clientId: m.clientId ?? `outpost-${config.device.id}`,
    username: m.username,
    password: m.password,
    ca: m.ca,
    cert: m.cert,
    key: m.key,
    rejectUnauthorized: m.rejectUnauthorized,
    keepaliveMs: durationMs(m.keepalive),
    connectTimeoutMs: durationMs(m.connectTimeout),
    reconnectMinMs: durationMs(m.reconnectMin),
    reconnectMaxMs: durationMs(m.reconnectMax),
    maxPacketSize: sizeBytes(m.maxPacketSize),
    sessionExpiryS: Math.round(durationMs(m.sessionExpiry) / 1000),
    persistentSession311: m.persistentSession311,
  };
}

/** The command policy of the current snapshot, built once per snapshot. */
export function commandPolicy(settings: ConfigStore): () => CommandPolicy {
  const policies = new WeakMap<Snapshot, CommandPolicy>();
  return () => {
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
}

export function warnIfUnsigned(allowUnsigned: boolean, logger: Logger): void {
  if (allowUnsigned) {
    logger.warn("commands.allowUnsigned is true: anyone who can publish on the broker can command this device");
  }
}

/** The agent's own footprint, so that a fleet shows which devices it costs too much on. */
export function agentMetrics(): Record<string, number> {
  const mem = process.memoryUsage();
  const cpu = process.cpuUsage();
  return {
    rss: mem.rss,
    heapUsed: mem.heapUsed,
    cpuUserMs: Math.round(cpu.user / 1000),
    cpuSystemMs: Math.round(cpu.system / 1000),
  };
}
