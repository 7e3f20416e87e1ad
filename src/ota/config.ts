import { z } from "zod";
import { duration, MAX_LIST, publicKeySchema, size } from "../config/schema.ts";
import { configSection } from "../kernel/module.ts";

/** The OTA module's section: who may sign releases, and the download's bounds. */
export const updateSection = configSection({
  key: "update",
  schema: z
    .strictObject({
      /** Release keys (`outpost keygen`'s .pub contents), apart from the command keys. */
      trustedKeys: z.array(publicKeySchema).max(MAX_LIST).default([]),
      maxSize: size("512MiB", 1024 * 1024, 4 * 1024 * 1024 * 1024),
      /** One HTTP range, headers to last byte. */
      rangeTimeout: duration("60s", 1000, 3_600_000),
      /** How often download progress is published on `P/D/update` (retained). */
      progressInterval: duration("2s", 100, 600_000),
      /** How long a new release may take to become healthy after its first start before it is rolled back. */
      trialTimeout: duration("2m", 1000, 3_600_000),
    })
    .prefault({}),
  // Like commands.trustedKeys' policy: who may replace the agent is decided in the device's file only.
  localOnly: ["trustedKeys"],
});
