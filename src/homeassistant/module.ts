import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import { errorMessage } from "../core/errors.ts";
import { writeFileAtomically } from "../core/files.ts";
import { configSection, type Module } from "../kernel/module.ts";
import { VERSION } from "../version.ts";
import { discoveryConfigs } from "./discovery.ts";

export const homeassistantSection = configSection({
  key: "homeassistant",
  schema: z
    .strictObject({
      // Retained discovery configs, so the device appears in Home Assistant with no YAML; removed when false.
      discovery: z.boolean().default(false),
      prefix: z
        .string()
        .regex(/^[^#+\s]+$/, "expected a topic prefix without wildcards")
        .default("homeassistant"),
    })
    .prefault({}),
});

/** The topics this device published configs on, kept so that they can be removed after a restart too. */
const MARKER = "homeassistant.json";

/**
 * Home Assistant discovery: while `homeassistant.discovery` is true, a retained config per entity and the
 * retained merged state `P/D/state` the sensors read. Turned off (at once, or at the next start), every config
 * it published and the state topic are removed with empty retained messages.
 */
export const homeassistantModule: Module<typeof homeassistantSection> = {
  name: "homeassistant",
  config: homeassistantSection,
  create(ctx) {
    const marker = join(ctx.stateDir, MARKER);
    const stateTopic = ctx.topics.state;
    let published = new Set<string>(readMarker(marker));
    let board: { kind: string; model: string } | undefined;
    let removalPending = false;
    const enabled = () => ctx.config().discovery;

    const remember = () => {
      try {
        if (published.size === 0) rmSync(marker, { force: true });
        else writeFileAtomically(marker, `${JSON.stringify([...published])}\n`);
      } catch (err) {
        ctx.logger.warn({ err: errorMessage(err) }, "could not keep the list of discovery topics");
      }
    };
    const publish = (metrics: Record<string, unknown>) => {
      board ??= ctx.telemetry()?.board() ?? { kind: "other", model: "unknown" };
      const configs = discoveryConfigs(
        {
          prefix: ctx.config().prefix,
          deviceId: ctx.deviceId,
          stateTopic,
          statusTopic: ctx.topics.status,
          version: VERSION,
          board,
        },
        metrics,
      );
      // The state first: a sensor whose config arrives before any state would show as unknown.
      ctx.retained.set(stateTopic, { ts: ctx.clock.now(), metrics });
      const before = published.size;
      for (const [topic, config] of configs) {
        ctx.retained.set(topic, config);
        published.add(topic);
      }
      for (const topic of published) {
        if (configs.has(topic) || topic === stateTopic) continue;
        ctx.retained.clear(topic);
        published.delete(topic);
      }
      published.add(stateTopic);
      if (published.size !== before) remember();
    };
    const remove = () => {
      if (published.size === 0) return;
      for (const topic of published) ctx.retained.clear(topic);
      ctx.logger.info({ topics: published.size }, "home assistant discovery removed");
      published = new Set();
      // The marker goes once connected: the empty messages are queued then, so none is lost to a stop.
      removalPending = true;
    };

    const stopListening = ctx.latest.onChange((merged) => {
      if (enabled()) publish(merged.metrics);
      else if (removalPending && ctx.vitals().connected) {
        removalPending = false;
        remember();
      }
    });
    // Off at start, but configs of an earlier run are on the broker: remove them (the empty retained messages
    // go out on connect).
    if (!enabled()) remove();
    return {
      describe: () => ({ discovery: enabled(), prefix: ctx.config().prefix, topics: published.size }),
      onConfigChange: (next, previous) => {
        const [a, b] = [previous, next];
        if (a.discovery && (!b.discovery || a.prefix !== b.prefix)) remove();
        if (b.discovery && (!a.discovery || a.prefix !== b.prefix)) {
          const merged = ctx.latest.merged();
          if (merged) publish(merged.metrics);
        }
      },
      quiesce: () => {
        stopListening();
      },
    };
  },
};

function readMarker(path: string): string[] {
  try {
    const list = JSON.parse(readFileSync(path, "utf8")) as unknown;
    return Array.isArray(list) ? list.filter((t): t is string => typeof t === "string") : [];
  } catch {
    return [];
  }
}
