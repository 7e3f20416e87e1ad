import type { Registry } from "prom-client";
import { valueAt as at } from "../core/merge.ts";
import { type Series, scrapedFamily } from "../kernel/scraped.ts";
import type { MetricPath } from "../kernel/telemetry-port.ts";

type Labels = Record<string, string>;

interface Family {
  name: string;
  help: string;
  type: "gauge" | "counter";
  labels: string[];
  read(m: Record<string, unknown>): Series;
}

/** A figure's path, checked against the telemetry's shape. */
const metric = (path: MetricPath): string => path;

const num = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v : undefined);

/** One series from one path, scaled; none when the metric is absent. */
function one(path: MetricPath, scale = 1, labels: Labels = {}): (m: Record<string, unknown>) => Series {
  return (m) => {
    const v = num(at(m, path));
    return v === undefined ? [] : [[labels, v * scale]];
  };
}

/** One series per key of the object at `path`, labelled `label`, reading `field` (or the value itself). */
function each(path: MetricPath, label: string, field?: string, scale = 1): (m: Record<string, unknown>) => Series {
  return (m) => {
    const node = at(m, path);
    if (node === null || typeof node !== "object" || Array.isArray(node)) return [];
    return Object.entries(node).flatMap(([key, value]): Series => {
      const v = num(field === undefined ? value : at(value, field));
      return v === undefined ? [] : [[{ [label]: key }, v * scale]];
    });
  };
}

const flags = ["underVoltage", "armFrequencyCapped", "throttled", "softTempLimit"];

/**
 * The device's figures as Prometheus families, named and labelled the Prometheus way (base units: bytes,
 * seconds, hertz, volts, amperes, watts, celsius, ratios 0-1). Read from the latest sample at each scrape.
 */
export const DEVICE_FAMILIES: Family[] = [
  {
    name: "outpost_cpu_busy_ratio",
    help: "Share of CPU time not idle since the previous sample, all CPUs and each core",
    type: "gauge",
    labels: ["cpu"],
    read: (m) => {
      const all = one("cpu.load", 0.01, { cpu: "all" })(m);
      const cores = at(m, metric("cpu.cores"));
      const per = Array.isArray(cores)
        ? cores.flatMap((v, i): Series => (num(v) === undefined ? [] : [[{ cpu: String(i) }, (v as number) / 100]]))
        : [];
      return [...all, ...per];
    },
  },
  { name: "outpost_memory_total_bytes", help: "Physical memory", type: "gauge", labels: [], read: one("memory.total") },
  {
    name: "outpost_memory_used_bytes",
    help: "Memory in use (total - available)",
    type: "gauge",
    labels: [],
    read: one("memory.used"),
  },
  {
    name: "outpost_memory_available_bytes",
    help: "Memory available to new work",
    type: "gauge",
    labels: [],
    read: one("memory.available"),
  },
  { name: "outpost_swap_used_bytes", help: "Swap in use", type: "gauge", labels: [], read: one("memory.swapUsed") },
  {
    name: "outpost_filesystem_size_bytes",
    help: "Size of the root file system and of the one holding state.dir",
    type: "gauge",
    labels: ["fs"],
    read: (m) => [...one("disk.size", 1, { fs: "root" })(m), ...one("statefs.size", 1, { fs: "state" })(m)],
  },
  {
    name: "outpost_filesystem_used_bytes",
    help: "Bytes used on the root file system and on the one holding state.dir",
    type: "gauge",
    labels: ["fs"],
    read: (m) => [...one("disk.used", 1, { fs: "root" })(m), ...one("statefs.used", 1, { fs: "state" })(m)],
  },
  {
    name: "outpost_filesystem_free_bytes",
    help: "Bytes free for unprivileged users on the file system holding state.dir",
    type: "gauge",
    labels: ["fs"],
    read: one("statefs.free", 1, { fs: "state" }),
  },
  {
    name: "outpost_temperature_celsius",
    help: "Temperature of each thermal zone",
    type: "gauge",
    labels: ["zone"],
    read: each("temperature.zones", "zone"),
  },
  {
    name: "outpost_network_receive_bytes_total",
    help: "Bytes received per interface since boot",
    type: "counter",
    labels: ["interface"],
    read: each("network", "interface", "rxBytes"),
  },
  {
    name: "outpost_network_transmit_bytes_total",
    help: "Bytes sent per interface since boot",
    type: "counter",
    labels: ["interface"],
    read: each("network", "interface", "txBytes"),
  },
  {
    name: "outpost_load_average",
    help: "System load average",
    type: "gauge",
    labels: ["period"],
    read: (m) => (["1m", "5m", "15m"] as const).flatMap((p) => one(`load.${p}`, 1, { period: p })(m)),
  },
  {
    name: "outpost_system_uptime_seconds",
    help: "Time since the system booted",
    type: "gauge",
    labels: [],
    read: one("uptime.seconds"),
  },
  {
    name: "outpost_disk_read_bytes_per_second",
    help: "Disk read rate over the last sample",
    type: "gauge",
    labels: ["device"],
    read: each("diskio", "device", "readBytesPerS"),
  },
  {
    name: "outpost_disk_written_bytes_per_second",
    help: "Disk write rate over the last sample",
    type: "gauge",
    labels: ["device"],
    read: each("diskio", "device", "writeBytesPerS"),
  },
  {
    name: "outpost_disk_busy_ratio",
    help: "Share of the last sample with disk I/O in flight",
    type: "gauge",
    labels: ["device"],
    read: each("diskio", "device", "busyPercent", 0.01),
  },
  {
    name: "outpost_storage_life_used_ratio",
    help: "eMMC wear estimate (upper bound of the JEDEC step), per cell type",
    type: "gauge",
    labels: ["device", "cells"],
    read: (m) => {
      const w = at(m, "wear");
      if (w === null || typeof w !== "object") return [];
      return Object.entries(w).flatMap(
        ([device, info]): Series =>
          ["a", "b"].flatMap((cells): Series => {
            const v = num(at(info, `lifeUsedPercent.${cells}`));
            return v === undefined ? [] : [[{ device, cells }, v / 100]];
          }),
      );
    },
  },
  {
    name: "outpost_agent_starts_total",
    help: "Starts of the agent on this state.dir",
    type: "counter",
    labels: [],
    read: one("restarts.starts"),
  },
  {
    name: "outpost_agent_unclean_stops_total",
    help: "Starts that found the previous run had not stopped cleanly",
    type: "counter",
    labels: [],
    read: one("restarts.unclean"),
  },
  {
    name: "outpost_pi_throttle_flag",
    help: "Raspberry Pi firmware throttling flags (1 = set), now and since boot",
    type: "gauge",
    labels: ["flag", "when"],
    read: (m) =>
      (["now", "sinceBoot"] as const).flatMap((when) =>
        flags.flatMap((flag): Series => {
          const v = at(m, `pi.${when}.${flag}`);
          return typeof v === "boolean" ? [[{ flag, when: when === "now" ? "now" : "since_boot" }, v ? 1 : 0]] : [];
        }),
      ),
  },
  {
    name: "outpost_pi_arm_clock_hertz",
    help: "Raspberry Pi ARM clock",
    type: "gauge",
    labels: [],
    read: one("pi.armClockMHz", 1e6),
  },
  {
    name: "outpost_gpu_busy_ratio",
    help: "Jetson GPU load",
    type: "gauge",
    labels: [],
    read: one("jetson.gpu.loadPercent", 0.01),
  },
  {
    name: "outpost_gpu_clock_hertz",
    help: "Jetson GPU clock",
    type: "gauge",
    labels: [],
    read: one("jetson.gpu.clockMHz", 1e6),
  },
  {
    name: "outpost_emc_clock_hertz",
    help: "Jetson memory controller clock (needs debugfs: root only)",
    type: "gauge",
    labels: [],
    read: one("jetson.emcClockMHz", 1e6),
  },
  {
    name: "outpost_cpu_clock_hertz",
    help: "Jetson CPU clock per online core",
    type: "gauge",
    labels: ["cpu"],
    // cpu="0", "1", ... as in outpost_cpu_busy_ratio (the payload keys them cpu0, cpu1, ...).
    read: (m) =>
      each(
        "jetson.cpuClockMHz",
        "cpu",
        undefined,
        1e6,
      )(m).map(([l, v]) => [{ cpu: (l.cpu ?? "").replace(/^cpu/, "") }, v]),
  },
  {
    name: "outpost_power_rail_volts",
    help: "Jetson INA3221 rail voltage",
    type: "gauge",
    labels: ["rail"],
    read: each("jetson.rails", "rail", "volts"),
  },
  {
    name: "outpost_power_rail_amperes",
    help: "Jetson INA3221 rail current",
    type: "gauge",
    labels: ["rail"],
    read: each("jetson.rails", "rail", "amperes"),
  },
  {
    name: "outpost_power_rail_watts",
    help: "Jetson INA3221 rail power (volts x amperes)",
    type: "gauge",
    labels: ["rail"],
    read: each("jetson.rails", "rail", "watts"),
  },
  {
    name: "outpost_power_mode_info",
    help: "Jetson nvpmodel power mode (the value is always 1)",
    type: "gauge",
    labels: ["id", "name"],
    read: (m) => {
      const id = num(at(m, metric("jetson.powerMode.id")));
      const name = at(m, metric("jetson.powerMode.name"));
      return id === undefined ? [] : [[{ id: String(id), name: typeof name === "string" ? name : "" }, 1]];
    },
  },
];

/** Registers the device families, each filled from `latest()` when scraped (absent metrics: no series). */
export function registerDeviceMetrics(registry: Registry, latest: () => Record<string, unknown> | undefined): void {
  for (const family of DEVICE_FAMILIES) {
    scrapedFamily({
      registry,
      type: family.type,
      name: family.name,
      help: family.help,
      labels: family.labels,
      read: () => {
        const m = latest();
        // Scaling by 0.01 or 1e6 leaves float noise (1.8 * 0.01 = 0.018000000000000002): 12 digits are plenty.
        return m
          ? family.read(m).map(([labels, value]): [Labels, number] => [labels, Number(value.toPrecision(12))])
          : [];
      },
    });
  }
}
