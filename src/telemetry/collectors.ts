import { loadavg } from "node:os";
import si from "systeminformation";

/** One named source of metrics. It may fail or hang; the telemetry loop contains both. */
export interface Collector {
  name: string;
  collect(): Promise<unknown>;
}

const round = (n: number, digits = 1) => {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
};

/** The default collectors, all through systeminformation, each cheap enough to run every second. */
export function systemCollectors(): Collector[] {
  return [
    {
      name: "cpu",
      async collect() {
        const load = await si.currentLoad();
        return {
          load: round(load.currentLoad),
          cores: load.cpus.map((c) => round(c.load)),
        };
      },
    },
    {
      name: "memory",
      async collect() {
        const m = await si.mem();
        return {
          total: m.total,
          used: m.active,
          available: m.available,
          swapTotal: m.swaptotal,
          swapUsed: m.swapused,
        };
      },
    },
    {
      name: "disk",
      async collect() {
        const all = await si.fsSize();
        const root = all.find((fs) => fs.mount === "/") ?? all[0];
        if (!root) return null;
        return { mount: root.mount, size: root.size, used: root.used, usePercent: round(root.use) };
      },
    },
    {
      name: "temperature",
      async collect() {
        const t = await si.cpuTemperature();
        // systeminformation reports null or -1 when the board has no sensor.
        return typeof t.main === "number" && t.main > -1 ? { cpu: t.main } : null;
      },
    },
    {
      name: "network",
      async collect() {
        const stats = await si.networkStats("*");
        return Object.fromEntries(stats.map((s) => [s.iface, { rxBytes: s.rx_bytes, txBytes: s.tx_bytes }]));
      },
    },
    {
      name: "uptime",
      async collect() {
        return { seconds: Math.round(si.time().uptime) };
      },
    },
    {
      name: "load",
      async collect() {
        const [one, five, fifteen] = loadavg();
        return { "1m": one, "5m": five, "15m": fifteen };
      },
    },
  ];
}
