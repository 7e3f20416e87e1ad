import { z } from "zod";
import { configSection } from "../kernel/module.ts";

/** The observability module's section: the optional HTTP listener for /metrics and /healthz. */
export const httpSection = configSection({
  key: "http",
  schema: z
    .strictObject({
      // Off unless set. 127.0.0.1:9464 keeps it on the device; 0.0.0.0:9464 lets a Prometheus elsewhere scrape.
      listen: z
        .string()
        .regex(/^(\[[0-9a-fA-F:.]+\]|[^:[\]\s]+):\d{1,5}$/, "expected host:port, e.g. 127.0.0.1:9464")
        .nullable()
        .default(null),
    })
    .prefault({}),
  restartOnly: ["listen"],
});
