import { readdir, readFile, statfs } from "node:fs/promises";
import { join } from "node:path";
import { type Collector, WithErrors } from "../kernel/module.ts";
import { SKIPPED_INTERFACES } from "./config.ts";
import { busyPercent, parseMeminfo, parseNetDev, parseProcStat } from "./procfs.ts";

export type { Collector };

const round = (n: number, digits = 1) => {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
};

export interface CollectorOptions {
  /** Where procfs and sysfs are mounted; fixture trees can stand in for a board. */
  procRoot?: string;
  sysRoot?: string;
  /** The filesystem whose usage is reported. */
  rootFs?: string;
  /** Interface names not reported (`name` or `prefix*`), read at each sample. */
  skipInterfaces?: () => readonly string[];
}

/** Usual uplinks (PPP, cellular modems, WireGuard): always reported, whatever the skip list says. */
const UPLINKS = /^(ppp|wwan|wg)/;

/** Whether an interface is reported: not matched by the skip list, or an uplink. */
export function reportedInterface(name: string, skip: readonly string[]): boolean {
  if (UPLINKS.test(name)) return true;
  return !skip.some((p) => (p.endsWith("*") ? name.startsWith(p.slice(0, -1)) : name === p));
}

/**
 * The default collectors, each cheap enough to run every second on a Pi: direct reads of /proc and /sys
 * (systeminformation, used at first, spawned processes on most calls).
 */
export function systemCollectors(options: CollectorOptions = {}): Collector[] {
  const procRoot = options.procRoot ?? "/proc";
  const sysRoot = options.sysRoot ?? "/sys";
  let previous: ReturnType<typeof parseProcStat>;
  const rootFs = options.rootFs ?? "/";
  return [
    {
      name: "cpu",
      async collect() {
        // /proc/stat read in-process: si.currentLoad() spawns a shell, cat and grep on every call.
        const stat = parseProcStat(await readFile(join(procRoot, "stat"), "utf8"));
        if (!stat) throw new Error("no cpu line in /proc/stat");
        const result = {
          load: round(busyPercent(previous?.all, stat.all)),
          cores: stat.cores.map((core, i) => round(busyPercent(previous?.cores[i], core))),
        };
        previous = stat;
        return result;
      },
    },
    {
      name: "memory",
      async collect() {
        // Read in-process, as systeminformation's mem() did (the same figures), without loading that library
        // (1.7 MiB of heap at idle, for one file).
        const m = parseMeminfo(await readFile(join(procRoot, "meminfo"), "utf8"));
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
        // statfs(2) instead of si.fsSize(), which spawns df on every call.
        const st = await statfs(rootFs);
        const size = st.blocks * st.bsize;
        const used = (st.blocks - st.bfree) * st.bsize;
        // Like df: the share of what non-root users can use.
        const usable = used + st.bavail * st.bsize;
        return { mount: rootFs, size, used, usePercent: usable > 0 ? round((used / usable) * 100) : 0 };
      },
    },
    {
      name: "temperature",
      // Thermal zones from sysfs instead of si.cpuTemperature(), which spawns a shell and cat per sensor.
      collect: () => thermalZones(join(sysRoot, "class", "thermal")),
    },
    {
      name: "network",
      // /proc/net/dev instead of si.networkStats(), which spawns cat per interface and ip.
      async collect() {
        const all = parseNetDev(await readFile(join(procRoot, "net", "dev"), "utf8"));
        const skip = options.skipInterfaces?.() ?? SKIPPED_INTERFACES;
        return Object.fromEntries(Object.entries(all).filter(([name]) => reportedInterface(name, skip)));
      },
    },
    {
      name: "uptime",
      // /proc/uptime instead of si.time(), which spawns date for the time zone.
      async collect() {
        const seconds = Number((await readFile(join(procRoot, "uptime"), "utf8")).split(/\s+/)[0]);
        return { seconds: Math.round(seconds) };
      },
    },
    {
      name: "load",
      async collect() {
        const [one, five, fifteen] = (await readFile(join(procRoot, "loadavg"), "utf8")).split(/\s+/).map(Number);
        return { "1m": one, "5m": five, "15m": fifteen };
      },
    },
  ];
}

/** Zone types that are the CPU (or SoC) on the boards we run on: Pi, Jetson, x86. */
const CPU_ZONE = /^(cpu|soc|x86_pkg_temp|cpu-thermal|cpu_thermal|CPU-therm|acpitz)/i;

/**
 * Every thermal zone in °C, and `cpu`: the hottest CPU-like zone (or the first zone). Null when the board
 * has none, so that the metric is absent rather than zero.
 */
export async function thermalZones(dir: string): Promise<Record<string, unknown> | WithErrors | null> {
  let entries: string[];
  try {
    entries = (await readdir(dir)).filter((e) => e.startsWith("thermal_zone")).sort();
  } catch {
    return null;
  }
  const zones: Record<string, number> = {};
  const errors: Record<string, string> = {};
  let cpu: number | undefined;
  let first: number | undefined;
  for (const entry of entries) {
    try {
      const [type, temp] = await Promise.all([
        readFile(join(dir, entry, "type"), "utf8"),
        readFile(join(dir, entry, "temp"), "utf8"),
      ]);
      const celsius = round(Number(temp.trim()) / 1000);
      if (!Number.isFinite(celsius)) {
        errors[`temperature.${entry}`] =
          `not a number in /sys/class/thermal/${entry}/temp: ${JSON.stringify(temp.trim().slice(0, 20))}`;
        continue;
      }
      const name = type.trim() || entry;
      zones[name] = celsius;
      first ??= celsius;
      if (CPU_ZONE.test(name)) cpu = Math.max(cpu ?? celsius, celsius);
    } catch (err) {
      // A zone can vanish or refuse reads (disabled sensors return EINVAL): it is left out, the others count.
      errors[`temperature.${entry}`] = `${(err as NodeJS.ErrnoException).code ?? "error"}: /sys/class/thermal/${entry}`;
    }
  }
  const main = cpu ?? first;
  const value = main === undefined ? null : { cpu: main, zones };
  return Object.keys(errors).length > 0 ? new WithErrors(value ?? {}, errors) : value;
}
