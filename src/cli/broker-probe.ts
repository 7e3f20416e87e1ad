import { randomBytes } from "node:crypto";
import type { MqttClient } from "mqtt";
import { OutpostError } from "../core/errors.ts";
import { withDeadline } from "../core/lifecycle.ts";
import { groupCommandPrefix } from "../mqtt/topics.ts";

/**
 * What a broker does with topics and retained messages, learned by trying it on the connection ctl already has.
 * The probes publish only where an operator's ACL lets it write (docs/broker.md): a command topic of a group
 * whose name (`_probe-...`) no device can have, since group names start with a letter or digit.
 */
export type Dots = "kept" | "split" | "unknown";

/** How long a probe waits for its own message to come back. */
export const PROBE_WAIT_MS = 2000;

function probeTopic(prefix: string): string {
  return `${groupCommandPrefix(prefix, `_probe-${randomBytes(6).toString("hex")}`)}`;
}

/**
 * Whether `p` settled well within `ms`. A QoS 1 publish or a subscription is never settled by MQTT.js when the
 * broker closes the connection over it (RabbitMQ does, on a publish its ACL refuses): a probe must not wait
 * for it for ever, nor let the process run out of things to wait for and exit as if it had succeeded.
 */
export function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  return withDeadline(p, ms, () => new Error("probe deadline")).then(
    () => true,
    () => false,
  );
}

/** Publishes `leaf` under a fresh probe topic and returns the topics it came back on within `waitMs`. */
async function echo(
  client: MqttClient,
  prefix: string,
  leaf: string,
  options: { retain?: boolean; subscribeAfter?: boolean; filter?: (base: string) => string },
  waitMs: number,
): Promise<{ base: string; seen: { topic: string; retain: boolean }[] }> {
  const base = probeTopic(prefix);
  const filter = options.filter?.(base) ?? `${base}#`;
  const seen: { topic: string; retain: boolean }[] = [];
  let arrived: () => void = () => {};
  const first = new Promise<void>((resolve) => {
    arrived = resolve;
  });
  const onMessage = (topic: string, payload: Buffer, packet: { retain?: boolean }) => {
    if (!topic.startsWith(base) || payload.length === 0) return;
    seen.push({ topic, retain: packet.retain === true });
    arrived();
  };
  client.on("message", onMessage);
  try {
    const subscribe = () => within(client.subscribeAsync(filter, { qos: 1 }), waitMs);
    if (!options.subscribeAfter && !(await subscribe())) return { base, seen };
    const retain = options.retain === true;
    if (!(await within(client.publishAsync(`${base}${leaf}`, "probe", { qos: 1, retain }), waitMs)))
      return { base, seen };
    if (options.subscribeAfter && !(await subscribe())) return { base, seen };
    await within(first, waitMs);
    return { base, seen };
  } finally {
    client.off("message", onMessage);
    await within(client.unsubscribeAsync(filter), waitMs);
    // A retained probe is removed again, whatever came of it: nothing of it stays on the broker.
    if (options.retain) await within(client.publishAsync(`${base}${leaf}`, "", { qos: 1, retain: true }), waitMs);
  }
}

/** Whether a `.` in a topic level stays one (`kept`) or becomes a level separator (`split`, RabbitMQ 3.10). */
export async function probeDots(client: MqttClient, prefix: string, waitMs = PROBE_WAIT_MS): Promise<Dots> {
  const { base, seen } = await echo(client, prefix, "a.b", {}, waitMs);
  const topic = seen[0]?.topic;
  if (topic === `${base}a.b`) return "kept";
  if (topic === `${base}a/b`) return "split";
  return "unknown";
}

/**
 * Whether a retained message reaches a later subscription through a wildcard (`P/+/status`, what `ctl devices`
 * reads): RabbitMQ 3.10 delivers retained messages only to a subscription of the exact topic.
 */
export async function probeRetainedWildcard(
  client: MqttClient,
  prefix: string,
  waitMs = PROBE_WAIT_MS,
): Promise<boolean | undefined> {
  const wild = await echo(client, prefix, "r", { retain: true, subscribeAfter: true, filter: (b) => `${b}+` }, waitMs);
  if (wild.seen.some((s) => s.retain)) return true;
  // Not through a wildcard: through the exact topic? If not that either, the broker keeps no retained
  // messages for us at all (or the ACL stopped the probe): unknown.
  const exact = await echo(client, prefix, "r", { retain: true, subscribeAfter: true, filter: (b) => `${b}r` }, waitMs);
  return exact.seen.some((s) => s.retain) ? false : undefined;
}

/**
 * The refusal of names with a dot on a broker that turns `.` into a level separator (`ctl call`, `ctl rollout`):
 * `what` is "device cam.9", "group line.3", or "devices cam.9 cam.10".
 */
export function splitDotsError(what: string, one: boolean): OutpostError {
  return new OutpostError(
    "BROKER_SPLITS_DOTS",
    `${what} ${one ? "has" : "have"} a dot, which this broker turns into a topic level separator (as RabbitMQ does): ${one ? "its" : "their"} topics cannot be told apart there; give ${one ? "it a name" : "them names"} without dots (docs/broker.md)`,
  );
}
