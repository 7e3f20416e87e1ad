import { z } from "zod";
import { duration, MAX_LIST } from "../config/schema.ts";

/** Interfaces left out unless configured otherwise: loopback, and the virtual ones of containers and shapers. */
export const SKIPPED_INTERFACES = ["lo", "veth*", "docker*", "br-*", "ifb*"];

/** The telemetry module's section of the configuration. */
export const telemetrySection = {
  key: "telemetry",
  schema: z
    .strictObject({
      interval: duration("10s", 50, 86_400_000),
      collectorTimeout: duration("2s", 50, 60_000),
      // Interfaces not reported: a name, or a prefix and "*". ppp*, wwan* and wg* are reported all the same.
      skipInterfaces: z
        .array(z.string().regex(/^[A-Za-z0-9._-]+\*?$|^\*$/, 'expected an interface name, "prefix*" or "*"'))
        .max(MAX_LIST, { message: `expected at most ${MAX_LIST} items` })
        .default(SKIPPED_INTERFACES),
    })
    .prefault({}),
} as const;
