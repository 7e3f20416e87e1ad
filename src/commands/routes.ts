import type { Logger } from "../core/logger.ts";
import { EVERY_DEVICE } from "../mqtt/topics.ts";
import { Refused } from "./rules.ts";
import type { CommandDefinition } from "./types.ts";

export interface Route {
  name: string;
  /** The device's own fallback reply topic, `P/D/cmd/<name>/reply`. */
  replyTopic: string;
  /** Published to every device (`P/_group/_all/cmd/`). */
  everyDevice: boolean;
}

/**
 * What the every-device group takes: presence and what a device is. Named, not "whatever changes nothing":
 * `debug.block` changes nothing and would freeze the whole fleet at once.
 */
export const EVERY_DEVICE_COMMANDS: ReadonlySet<string> = new Set(["ping", "describe"]);

/** A broadcast to the whole fleet is for looking: one signature must not restart or block every device at once. */
export function lookOnly(route: Route, group: string | undefined, definition: CommandDefinition, id: string): void {
  const fleetWide = route.everyDevice || group === EVERY_DEVICE;
  if (fleetWide && (definition.changesState !== false || !EVERY_DEVICE_COMMANDS.has(definition.name))) {
    throw new Refused(
      "BAD_REQUEST",
      `the every-device group (${EVERY_DEVICE}) takes only ${[...EVERY_DEVICE_COMMANDS].join(" and ")}, not ${route.name}`,
      id,
    );
  }
}

/**
 * What a broker that turns `.` into a level separator (RabbitMQ) makes of the command prefixes: a device id or
 * group with a dot cannot take commands there. Seen once, the log says so, instead of every command vanishing.
 */
export function dotsSplitWarning(prefixes: readonly string[], logger: Logger): (topic: string) => void {
  const split = (t: string) => t.replaceAll(".", "/");
  const dotted = prefixes.filter((p) => split(p) !== p).map((p) => ({ split: split(p), prefix: p }));
  let warned = false;
  return (topic) => {
    const hit = dotted.find((p) => topic.startsWith(p.split));
    if (!hit || warned) return;
    warned = true;
    logger.error(
      { subscribed: `${hit.prefix}+`, delivered: topic },
      "the broker turns '.' in topics into a level separator (as RabbitMQ does): a device id or group name with a dot cannot take commands on it; choose one without dots (docs/broker.md)",
    );
  };
}
