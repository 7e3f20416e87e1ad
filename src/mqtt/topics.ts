/** Topic names of the contract (shared/DESIGN.md, section MQTT topics; P = prefix, D = device id). */
export interface DeviceTopics {
  status: string;
  telemetry: string;
  /** The last full telemetry sample, retained: what a viewer that starts late merges partial samples into. */
  telemetryFull: string;
  /** Retained merged latest values (Home Assistant's sensors read it). */
  state: string;
  update: string;
  /** An update's chunk requests (device to the operator's `ctl update`) and their answers, outside the outbox. */
  updateGet: string;
  updateData: string;
  /** Sealed diagnostics chunks (logs, profiles) to the operator who asked, outside the outbox. */
  diag: string;
  event(type: string): string;
  alarm(type: string): string;
  result(task: string): string;
  command(name: string): string;
  commandReply(name: string): string;
  /** What follows this is a command name: `P/D/cmd/`. */
  commandPrefix: string;
}

export function deviceTopics(prefix: string, deviceId: string): DeviceTopics {
  const base = `${prefix}/${deviceId}`;
  return {
    status: `${base}/status`,
    telemetry: `${base}/telemetry`,
    telemetryFull: `${base}/telemetry/full`,
    state: `${base}/state`,
    update: `${base}/update`,
    updateGet: `${base}/update/get`,
    updateData: `${base}/update/data`,
    diag: `${base}/diag`,
    event: (type) => `${base}/events/${type}`,
    alarm: (type) => `${base}/alarms/${type}`,
    result: (task) => `${base}/results/${task}`,
    command: (name) => `${base}/cmd/${name}`,
    commandReply: (name) => `${base}/cmd/${name}/reply`,
    commandPrefix: `${base}/cmd/`,
  };
}

/**
 * The group every device is in (`P/_group/_all/cmd/`): presence on a broker that shows retained messages only
 * to exact subscriptions (RabbitMQ). Group names start with a letter or digit, so it names no user's group.
 * It takes `ping` and `describe` only (commands/routes.ts EVERY_DEVICE_COMMANDS).
 */
export const EVERY_DEVICE = "_all";

/**
 * A command name as it travels in a topic. `dotted` is the name itself (`task.list`); `flat` writes each `.` as
 * `_` (`task_list`) for brokers that turn `.` into a topic level separator (RabbitMQ 3.10): command names never
 * contain `_`, so the flat form reads back to one name. An agent takes both; `ctl` picks (docs/broker.md).
 */
export type CommandWire = "dotted" | "flat";

export function wireName(name: string, wire: CommandWire): string {
  return wire === "flat" ? name.replaceAll(".", "_") : name;
}

/** The command name that a topic's last level carries, in either form. */
export function nameFromWire(level: string): string {
  return level.replaceAll("_", ".");
}

/** What follows this is a command name sent to every member of a group: `P/_group/G/cmd/`. */
export function groupCommandPrefix(prefix: string, group: string): string {
  return `${prefix}/_group/${group}/cmd/`;
}

/**
 * Where a device answers an MQTT 5 request's response topic: under its own `P/D/reply/`, the only response
 * topics it publishes on, so that a broker ACL can confine each device to `P/D/#` (docs/broker.md).
 */
export function replyNamespace(prefix: string, device: string): string {
  return `${prefix}/${device}/reply/`;
}

/** A response topic for one operator client's requests to one device. */
export function deviceReplyTopic(prefix: string, device: string, client: string): string {
  return `${replyNamespace(prefix, device)}${client}`;
}

/** Filters over every device: `P/+/status`, `P/+/telemetry`, `P/+/telemetry/full`. */
export function allDevices(prefix: string, leaf: "status" | "telemetry" | "telemetry/full"): string {
  return `${prefix}/+/${leaf}`;
}
