import { z } from "zod";
import { duration, size } from "../config/schema.ts";
import { sleep } from "../core/clock.ts";
import { loopComponent } from "../core/lifecycle.ts";
import { workerThreads } from "../core/threads.ts";
import { configSection, type Module } from "../kernel/module.ts";
import { GrowthDetector, type Resource, type ResourceSample } from "./growth.ts";

const resourcesSection = configSection({
  key: "resources",
  schema: z
    .strictObject({
      interval: duration("60s", 1000, 3_600_000),
      // 10 samples a window, 6 rising windows: an hour of growth at the default interval.
      windowSamples: z.number().int().min(2).max(1000).default(10),
      windows: z.number().int().min(2).max(100).default(6),
      rssGrowth: size("16MiB", 1024 * 1024, 1024 * 1024 * 1024),
      heapGrowth: size("8MiB", 1024 * 1024, 1024 * 1024 * 1024),
      handleGrowth: z.number().int().min(1).max(100_000).default(100),
    })
    .prefault({}),
  restartOnly: ["interval", "windowSamples", "windows", "rssGrowth", "heapGrowth", "handleGrowth"],
});

/** This process's figures: what a leak would grow. */
function processSample(): ResourceSample {
  const { rss, heapUsed } = process.memoryUsage();
  // Timers excluded: they come and go with every wait; sockets, files and handles that leak do not.
  const handles = process.getActiveResourcesInfo().filter((r) => r !== "Timeout" && r !== "Immediate").length;
  return { rss, heapUsed, handles, workers: workerThreads() };
}

/**
 * Leak watch: samples RSS, heap, active handles and workers every `resources.interval`; growth sustained over
 * `windows` windows raises `P/D/alarms/resource-growth` (active), and the first window that stops rising
 * clears it. The latest sample is in every telemetry message and in describe.
 */
export function resourcesModuleFor(sample: () => ResourceSample): Module<typeof resourcesSection> {
  return {
    name: "resources",
    config: resourcesSection,
    create(ctx) {
      const config = ctx.config();
      const detector = new GrowthDetector({
        windowSamples: config.windowSamples,
        windows: config.windows,
        minGrowth: {
          rss: config.rssGrowth,
          heapUsed: config.heapGrowth,
          handles: config.handleGrowth,
        },
      });
      let last = sample();
      let active: Resource[] = [];
      const heartbeat = ctx.heartbeat("loop", () => 3 * config.interval + 5000);
      const run = async (signal: AbortSignal) => {
        while (!signal.aborted) {
          last = sample();
          heartbeat.beat();
          const verdict = detector.add(last);
          if (verdict) {
            const changed = verdict.growing.join() !== active.join();
            if (changed && (verdict.growing.length > 0 || active.length > 0)) {
              active = verdict.growing;
              ctx.alarm("resource-growth", { active: active.length > 0, growing: active, floors: verdict.floors });
              const log = active.length > 0 ? ctx.logger.warn.bind(ctx.logger) : ctx.logger.info.bind(ctx.logger);
              log({ growing: active, floors: verdict.floors }, "resource growth alarm");
            }
          }
          await sleep(config.interval, signal, { unref: true });
        }
      };
      return {
        components: [
          loopComponent("resources.watch", run, (err) => ctx.logger.error({ err }, "resource watch failed")),
        ],
        collectors: [{ name: "resources", collect: async () => ({ ...last, growing: active }) }],
        describe: () => ({ ...last, growing: active }),
      };
    },
  };
}

/** The leak watch of this process (src/modules.ts). */
export const resourcesModule = resourcesModuleFor(processSample);
