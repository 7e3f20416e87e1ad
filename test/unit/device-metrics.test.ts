// Issue 14, item 7: the device's figures as Prometheus families, from a Jetson fixture sample.
import assert from "node:assert/strict";
import { it } from "node:test";
import { Registry } from "prom-client";
import { registerDeviceMetrics } from "../../src/observability/device-metrics.ts";
import { fixtureSample } from "../helpers/boards.ts";

it("a Jetson sample becomes base-unit families with labels; absent metrics make no series", async () => {
  const { metrics } = await fixtureSample("jetson-orin-nano");
  const registry = new Registry();
  let latest: Record<string, unknown> | undefined;
  registerDeviceMetrics(registry, () => latest);
  // Before any sample: the families are declared, with no series.
  assert.doesNotMatch(await registry.metrics(), /^outpost_gpu_busy_ratio /m);
  latest = metrics;
  const text = await registry.metrics();
  for (const line of [
    'outpost_cpu_clock_hertz{cpu="0"} 1510000000',
    'outpost_cpu_clock_hertz{cpu="5"} 730000000',
    "outpost_gpu_busy_ratio 0.276",
    "outpost_gpu_clock_hertz 624800000",
    'outpost_power_rail_watts{rail="VDD_IN"} 6.593',
    'outpost_power_rail_amperes{rail="VDD_SOC"} 0.328',
    'outpost_power_mode_info{id="0",name="15W"} 1',
    'outpost_temperature_celsius{zone="tj-thermal"} 48.2',
    'outpost_network_receive_bytes_total{interface="eth0"} 3120456',
    'outpost_cpu_busy_ratio{cpu="all"} 0.018',
  ]) {
    assert.ok(text.includes(`\n${line}\n`), `missing: ${line}`);
  }
  // The EMC clock is absent (debugfs): no series, not a zero.
  assert.doesNotMatch(text, /^outpost_emc_clock_hertz /m);
  assert.doesNotMatch(text, /^outpost_pi_/m);
});
