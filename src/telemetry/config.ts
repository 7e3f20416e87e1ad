import { z } from "zod";
import { duration } from "../config/schema.ts";

/** The telemetry module's section of the configuration. */
export const telemetrySection = {
  key: "telemetry",
  schema: z
    .strictObject({
      interval: duration("10s", 50, 86_400_000),
      collectorTimeout: duration("2s", 50, 60_000),
    })
    .prefault({}),
} as const;
