// Issue 24: what must not compile, checked by `npm run typecheck` (tsc fails on an unused @ts-expect-error, so
// each line below proves its mistake is caught). Never run: type checks only.
import { z } from "zod";
import { duration } from "../../src/config/schema.ts";
import type { Typed } from "../../src/config/schema-walk.ts";
import { configSection, type ModuleContext } from "../../src/kernel/module.ts";
import type { MetricPath } from "../../src/kernel/telemetry-port.ts";

const schema = z.strictObject({ interval: duration("10s", 1, 60_000), nested: z.strictObject({ on: z.boolean() }) });

export const good = configSection({ key: "example", schema, restartOnly: ["", "interval", "nested.on"] });

// A path qualified with the section's own key (the bug that made service.debugCommands remote-settable).
// @ts-expect-error
export const qualified = configSection({ key: "example", schema, restartOnly: ["example.interval"] });

// A misspelt path.
// @ts-expect-error
export const misspelt = configSection({ key: "example", schema, localOnly: ["nested.off"] });

// A module reads its own section, typed: a duration is milliseconds, not the file's text.
export function reads(ctx: ModuleContext<Typed<z.output<typeof schema>>>): number {
  // @ts-expect-error
  ctx.config().interval.endsWith("s");
  // @ts-expect-error another module's section is not there
  ctx.config().telemetry;
  return ctx.config().interval;
}

// A telemetry figure is named by its path in the telemetry's shape.
export const used: MetricPath = "memory.used";
// @ts-expect-error
export const renamed: MetricPath = "memory.usedBytes";
