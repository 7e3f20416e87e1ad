import { z } from "zod";
import { duration } from "../config/schema.ts";
import { configSection } from "../kernel/module.ts";

/** The service module's section: how the agent talks to systemd. */
export const serviceSection = configSection({
  key: "service",
  schema: z
    .strictObject({
      // How long start waits for the broker before telling systemd READY anyway (the agent then works offline).
      // The unit's TimeoutStartSec must be longer (install writes 90s).
      readyTimeout: duration("30s", 0, 600_000),
      // debug.block, which stalls the event loop to prove the watchdog: never on a device in the field.
      debugCommands: z.boolean().default(false),
    })
    .prefault({}),
  restartOnly: ["debugCommands"],
  localOnly: ["debugCommands"],
});
