import { z } from "zod";
import { durationMs } from "../config/duration.ts";
import type { Module } from "../kernel/module.ts";
import { systemCollectors } from "./collectors.ts";
import { telemetrySection } from "./config.ts";
import { Telemetry } from "./telemetry.ts";

/**
 * Telemetry: samples every module's collectors (the device's own from /proc and /sys among them) once per
 * `telemetry.interval` and publishes them on `P/D/telemetry`; `telemetry.now` takes a sample on request.
 */
export const telemetryModule: Module<typeof telemetrySection> = {
  name: "telemetry",
  config: telemetrySection,
  create(ctx) {
    const settings = () => ctx.config().telemetry;
    const interval = () => durationMs(settings().interval);
    const timeout = () => durationMs(settings().collectorTimeout);
    const telemetry = new Telemetry({
      collectors: () => ctx.collectors(),
      intervalMs: interval,
      timeoutMs: timeout,
      publish: (sample) => {
        const body: Record<string, unknown> = { metrics: sample.metrics };
        if (Object.keys(sample.errors).length > 0) body.errors = sample.errors;
        ctx.send({ topic: ctx.topics.telemetry, priority: "telemetry", body });
      },
      logger: ctx.logger,
      // A cycle may take the collector timeout on top of the interval; three of those is a wedged loop.
      heartbeat: ctx.heartbeat("loop", () => 3 * (interval() + timeout()) + 5000),
    });
    return {
      components: [telemetry],
      collectors: systemCollectors({ skipInterfaces: () => settings().skipInterfaces }),
      commands: [
        {
          name: "telemetry.now",
          params: z.strictObject({}).nullish(),
          changesState: false,
          run: async () => {
            const sample = await telemetry.sample();
            const errors = Object.keys(sample.errors).length ? { errors: sample.errors } : {};
            return { metrics: sample.metrics, ...errors };
          },
        },
      ],
      describe: () => {
        const last = telemetry.lastSample;
        const lastSampleAgeMs = last === undefined ? null : Math.round(performance.now() - last);
        return { interval: settings().interval, samples: telemetry.count, lastSampleAgeMs };
      },
      health: () => {
        const last = telemetry.lastSample;
        const bound = 2 * interval() + timeout() + 1000;
        if (last === undefined) return { ok: telemetry.count > 0, reason: "no sample yet" };
        const age = performance.now() - last;
        return age <= bound ? { ok: true } : { ok: false, reason: `last sample ${Math.round(age)}ms ago` };
      },
      onConfigChange: (next, previous) => {
        // Ends the current wait, so that a new interval applies at once rather than after the old one.
        if (next.telemetry.interval !== previous.telemetry.interval) telemetry.wake();
      },
      quiesce: () => telemetry.stop(),
    };
  },
};
