import type { Module } from "../kernel/module.ts";
import { httpSection } from "./config.ts";
import { registerDeviceMetrics } from "./device-metrics.ts";
import { HttpEndpoint } from "./http.ts";

/**
 * Observability over HTTP, off unless `http.listen` is set: `/metrics` in the Prometheus text format (the
 * device's latest figures and the agent's own, from the one registry) and `/healthz` (the kernel's health).
 */
export const observabilityModule: Module<typeof httpSection> = {
  name: "observability",
  config: httpSection,
  create(ctx) {
    registerDeviceMetrics(ctx.metrics, () => ctx.latest.sampled()?.metrics);
    const listen = ctx.config().listen;
    if (listen === null) return { describe: () => ({ listen: null }) };
    const endpoint = new HttpEndpoint({
      listen,
      registry: ctx.metrics,
      health: () => ctx.health(),
      logger: ctx.logger,
    });
    return {
      components: [endpoint],
      describe: () => ({
        listen,
        address: endpoint.address ?? null,
        scrapes: endpoint.scrapes,
        problem: endpoint.problem ?? null,
      }),
      health: () => (endpoint.problem ? { ok: false, reason: endpoint.problem } : { ok: true }),
    };
  },
};
