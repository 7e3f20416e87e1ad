/**
 * Home Assistant MQTT discovery payloads (https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery):
 * one retained config per entity on `<prefix>/<component>/<node_id>/<object_id>/config`. Sensors read the
 * retained, merged state topic `P/D/state`, so a partial telemetry sample never shows as unknown; the device
 * is available while its retained status says `online`.
 */

import { valueAt } from "../core/merge.ts";
import type { JetsonMetrics, MetricPath } from "../kernel/telemetry-port.ts";

export interface DiscoveryInputs {
  prefix: string;
  deviceId: string;
  stateTopic: string;
  statusTopic: string;
  version: string;
  board: { kind: string; model: string };
}

interface Entity {
  component: "sensor" | "binary_sensor";
  objectId: string;
  name: string;
  /** Dotted path of the metric in `metrics`: the entity exists when the metric does. */
  path: MetricPath;
  template?: string;
  unit?: string;
  deviceClass?: string;
  stateClass?: "measurement" | "total_increasing";
  icon?: string;
  entityCategory?: "diagnostic";
}

const MiB = "(value_json.metrics.%s / 1048576) | round(1)";

/** Jinja access to a dotted path, with brackets for keys that are not identifiers (`load['1m']`). */
function access(path: string): string {
  return path
    .split(".")
    .map((key) => (/^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? `.${key}` : `['${key}']`))
    .join("");
}

const ENTITIES: Entity[] = [
  {
    component: "sensor",
    objectId: "cpu_load",
    name: "CPU load",
    path: "cpu.load",
    unit: "%",
    stateClass: "measurement",
    icon: "mdi:cpu-64-bit",
  },
  {
    component: "sensor",
    objectId: "memory_used",
    name: "Memory used",
    path: "memory.used",
    template: MiB,
    unit: "MiB",
    deviceClass: "data_size",
    stateClass: "measurement",
  },
  {
    component: "sensor",
    objectId: "disk_used",
    name: "Root disk used",
    path: "disk.usePercent",
    unit: "%",
    stateClass: "measurement",
    icon: "mdi:harddisk",
  },
  {
    component: "sensor",
    objectId: "state_free",
    name: "State storage free",
    path: "statefs.free",
    template: MiB,
    unit: "MiB",
    deviceClass: "data_size",
    stateClass: "measurement",
  },
  {
    component: "sensor",
    objectId: "temperature",
    name: "CPU temperature",
    path: "temperature.cpu",
    unit: "°C",
    deviceClass: "temperature",
    stateClass: "measurement",
  },
  {
    component: "sensor",
    objectId: "load_1m",
    name: "Load (1 min)",
    path: "load.1m",
    stateClass: "measurement",
    icon: "mdi:gauge",
  },
  {
    component: "sensor",
    objectId: "uptime",
    name: "Uptime",
    path: "uptime.seconds",
    unit: "s",
    deviceClass: "duration",
    entityCategory: "diagnostic",
  },
  {
    component: "sensor",
    objectId: "agent_memory",
    name: "Agent memory",
    path: "agent.rss",
    template: MiB,
    unit: "MiB",
    deviceClass: "data_size",
    stateClass: "measurement",
    entityCategory: "diagnostic",
  },
  {
    component: "sensor",
    objectId: "outbox_queued",
    name: "Messages queued",
    path: "outbox.queued",
    stateClass: "measurement",
    icon: "mdi:tray-full",
    entityCategory: "diagnostic",
  },
  {
    component: "binary_sensor",
    objectId: "under_voltage",
    name: "Under-voltage",
    path: "pi.now.underVoltage",
    deviceClass: "problem",
  },
  {
    component: "binary_sensor",
    objectId: "throttled",
    name: "Throttled",
    path: "pi.now.throttled",
    deviceClass: "problem",
  },
  {
    component: "sensor",
    objectId: "arm_clock",
    name: "ARM clock",
    path: "pi.armClockMHz",
    unit: "MHz",
    deviceClass: "frequency",
    stateClass: "measurement",
  },
  {
    component: "sensor",
    objectId: "gpu_load",
    name: "GPU load",
    path: "jetson.gpu.loadPercent",
    unit: "%",
    stateClass: "measurement",
    icon: "mdi:expansion-card",
  },
  {
    component: "sensor",
    objectId: "gpu_clock",
    name: "GPU clock",
    path: "jetson.gpu.clockMHz",
    unit: "MHz",
    deviceClass: "frequency",
    stateClass: "measurement",
  },
  {
    component: "sensor",
    objectId: "power_mode",
    name: "Power mode",
    path: "jetson.powerMode.name",
    icon: "mdi:flash",
    entityCategory: "diagnostic",
  },
];

/** Rails appear by name on each Jetson model: one power sensor per rail found. */
function railEntities(metrics: Record<string, unknown>): Entity[] {
  const rails = (metrics.jetson as JetsonMetrics | undefined)?.rails ?? {};
  return Object.keys(rails).map((rail) => ({
    component: "sensor" as const,
    objectId: `power_${rail.toLowerCase().replace(/[^a-z0-9]+/g, "_")}`,
    name: `Power ${rail}`,
    path: `jetson.rails.${rail}.watts` as const,
    unit: "W",
    deviceClass: "power",
    stateClass: "measurement" as const,
  }));
}

/**
 * HA's node_id and object_id allow `[a-zA-Z0-9_-]` only; device ids also allow `.`. Distinct devices must
 * never share a node id (`line.3` and `line_3` did: one vanished from HA, and turning discovery off on one
 * deleted the other's entities). An id without a dot keeps its node id of old (`outpost_<id>`, so dashboards
 * survive); one with a dot is escaped (`_` as `__`, `.` as `_d`) behind a second `_`. A device id starts with a
 * letter or digit, so no id without a dot can give a node id that starts `outpost__`: the mapping is injective.
 */
export function nodeId(deviceId: string): string {
  if (!deviceId.includes(".")) return `outpost_${deviceId}`;
  return `outpost__${deviceId.replace(/_/g, "__").replace(/\./g, "_d")}`;
}

/** The discovery configs for what `metrics` holds, by topic; the `online` connectivity sensor always. */
export function discoveryConfigs(
  i: DiscoveryInputs,
  metrics: Record<string, unknown>,
): Map<string, Record<string, unknown>> {
  const node = nodeId(i.deviceId);
  const device = {
    identifiers: [node],
    name: i.deviceId,
    model: i.board.model,
    manufacturer: "Outpost",
    sw_version: i.version,
  };
  const origin = { name: "Outpost", sw_version: i.version };
  const availability = {
    availability_topic: i.statusTopic,
    availability_template: "{{ 'online' if value_json.state == 'online' else 'offline' }}",
    payload_available: "online",
    payload_not_available: "offline",
  };
  const out = new Map<string, Record<string, unknown>>();
  out.set(`${i.prefix}/binary_sensor/${node}/online/config`, {
    name: "Online",
    unique_id: `${node}_online`,
    state_topic: i.statusTopic,
    value_template: "{{ 'ON' if value_json.state == 'online' else 'OFF' }}",
    payload_on: "ON",
    payload_off: "OFF",
    device_class: "connectivity",
    entity_category: "diagnostic",
    device,
    origin,
  });
  for (const e of [...ENTITIES, ...railEntities(metrics)]) {
    if (valueAt(metrics, e.path) == null) continue;
    const value = `value_json.metrics${access(e.path)}`;
    const template =
      e.component === "binary_sensor"
        ? `{{ 'ON' if ${value} else 'OFF' }}`
        : e.template
          ? `{{ ${e.template.replace("value_json.metrics.%s", value)} }}`
          : `{{ ${value} }}`;
    out.set(`${i.prefix}/${e.component}/${node}/${e.objectId}/config`, {
      name: e.name,
      unique_id: `${node}_${e.objectId}`,
      state_topic: i.stateTopic,
      value_template: template,
      ...(e.component === "binary_sensor" ? { payload_on: "ON", payload_off: "OFF" } : {}),
      ...(e.unit ? { unit_of_measurement: e.unit } : {}),
      ...(e.deviceClass ? { device_class: e.deviceClass } : {}),
      ...(e.stateClass ? { state_class: e.stateClass } : {}),
      ...(e.icon ? { icon: e.icon } : {}),
      ...(e.entityCategory ? { entity_category: e.entityCategory } : {}),
      ...availability,
      device,
      origin,
    });
  }
  return out;
}
