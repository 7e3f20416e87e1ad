import { join } from "node:path";
import type { JetsonMetrics, Rail } from "../../kernel/telemetry-port.ts";
import { list, type Reads, type Roots, readTrimmed, remembered } from "../sysfs.ts";

/** devfreq node names of the integrated GPU: Orin (ga10b; `gpu` from JetPack 6), Xavier (gv11b), TX2, Nano. */
const GPU_DEVFREQ = /^(17000000\.(gpu|ga10b|gv11b)|57000000\.gpu|gpu\.0|.*\.(ga10b|gv11b|gp10b|gm20b))$/;

/** `< POWER_MODEL ID=0 NAME=15W >` lines of /etc/nvpmodel.conf: mode id to name. */
export function parseNvpmodelConf(text: string): Map<number, string> {
  const names = new Map<number, string>();
  for (const match of text.matchAll(/<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=([^\s>]+)\s*>/g)) {
    names.set(Number(match[1]), match[2] ?? "");
  }
  return names;
}

/**
 * Power rails of the INA3221 monitors (JetPack 5/6: the mainline `ina3221` hwmon driver under
 * /sys/bus/i2c/drivers/ina3221/<bus>-<addr>/hwmon/hwmonN): per channel `inN_label`, `inN_input` (mV) and
 * `currN_input` (mA). The driver has no power node: power is their product.
 */
interface Channel {
  dir: string;
  n: string;
  label: string;
}

/** The INA3221 channels with a label, but not the summing one (`sum of shunt voltages`: no voltage of its own). */
async function channels(roots: Roots): Promise<Channel[]> {
  const driver = join(roots.sys, "bus", "i2c", "drivers", "ina3221");
  const out: Channel[] = [];
  for (const device of await list(driver)) {
    for (const hw of await list(join(driver, device, "hwmon"))) {
      const dir = join(driver, device, "hwmon", hw);
      for (const entry of await list(dir)) {
        const n = /^in(\d+)_label$/.exec(entry)?.[1];
        const label = n === undefined ? undefined : await readTrimmed(join(dir, entry));
        if (n !== undefined && label && !/sum of shunt/i.test(label)) out.push({ dir, n, label });
      }
    }
  }
  return out;
}

async function rails(found: Channel[], reads: Reads): Promise<Record<string, Rail> | undefined> {
  const out: Record<string, Rail> = {};
  for (const { dir, n, label } of found) {
    const mv = await reads.number(`rails.${label}`, join(dir, `in${n}_input`));
    const ma = await reads.number(`rails.${label}`, join(dir, `curr${n}_input`));
    if (mv === undefined || ma === undefined) continue;
    const volts = mv / 1000;
    const amperes = ma / 1000;
    out[label] = { volts, amperes, watts: Math.round(volts * amperes * 1000) / 1000 };
  }
  if (found.length === 0) reads.fail("rails", "no INA3221 channel under /sys/bus/i2c/drivers/ina3221");
  return Object.keys(out).length > 0 ? out : undefined;
}

/**
 * Jetson figures from sysfs, without tegrastats: GPU load (devfreq `device/load`, per mille) and clock, CPU
 * clocks (cpufreq), the EMC clock (debugfs: root only, so absent for the service user, with the reason in
 * `errors`), INA3221 power rails, and the nvpmodel power mode (/var/lib/nvpmodel/status and the names in
 * /etc/nvpmodel.conf). Thermal zones are the temperature collector's.
 */
export function jetsonMetrics(roots: Roots): (reads: Reads) => Promise<JetsonMetrics> {
  const devfreq = join(roots.sys, "class", "devfreq");
  const where = remembered(async () => ({
    gpu: (await list(devfreq)).find((name) => GPU_DEVFREQ.test(name)),
    channels: await channels(roots),
  }));
  return async (reads) => {
    const found = await where();
    return jetsonFigures(roots, reads, found.gpu, found.channels);
  };
}

async function jetsonFigures(
  roots: Roots,
  reads: Reads,
  gpu: string | undefined,
  found: Channel[],
): Promise<JetsonMetrics> {
  const out: JetsonMetrics = {};
  const devfreq = join(roots.sys, "class", "devfreq");
  if (gpu) {
    const load = await reads.number("gpu.loadPercent", join(devfreq, gpu, "device", "load"), 10, 1);
    const hz = await reads.number("gpu.clockMHz", join(devfreq, gpu, "cur_freq"), 1e6, 1);
    out.gpu = { ...(load !== undefined ? { loadPercent: load } : {}), ...(hz !== undefined ? { clockMHz: hz } : {}) };
  } else {
    reads.fail("gpu", "no GPU devfreq node under /sys/class/devfreq");
  }

  const cpus = (await list(join(roots.sys, "devices", "system", "cpu"))).filter((e) => /^cpu\d+$/.test(e));
  cpus.sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)));
  // Keyed by core: nvpmodel modes switch cores off, so a position in a list would not name one.
  const clocks: Record<string, number> = {};
  for (const cpu of cpus) {
    const path = join(roots.sys, "devices", "system", "cpu", cpu, "cpufreq", "scaling_cur_freq");
    // An offline core (nvpmodel modes switch cores off) has no cpufreq: it is left out, not an error.
    if (!(await list(join(roots.sys, "devices", "system", "cpu", cpu, "cpufreq"))).length) continue;
    const mhz = await reads.number(`cpuClockMHz.${cpu}`, path, 1000, 0);
    if (mhz !== undefined) clocks[cpu] = mhz;
  }
  if (Object.keys(clocks).length > 0) out.cpuClockMHz = clocks;

  const emc = await reads.number(
    "emcClockMHz",
    join(roots.sys, "kernel", "debug", "bpmp", "debug", "clk", "emc", "rate"),
    1e6,
    1,
  );
  if (emc !== undefined) out.emcClockMHz = emc;
  // The reason as read (ENOENT when debugfs is not mounted, EACCES when it is), and what it means.
  else
    reads.fail(
      "emcClockMHz",
      `${reads.errors["jetson.emcClockMHz"]} (the EMC clock is only in debugfs, which only root can read)`,
    );

  const power = await rails(found, reads);
  if (power) out.rails = power;

  const status = await reads.text("powerMode", join(roots.host, "var", "lib", "nvpmodel", "status"));
  const id = status === undefined ? undefined : /pmode:(\d+)/.exec(status)?.[1];
  if (id !== undefined) {
    const conf = await reads.text("powerMode", join(roots.host, "etc", "nvpmodel.conf"));
    const name = conf === undefined ? undefined : parseNvpmodelConf(conf).get(Number(id));
    out.powerMode = { id: Number(id), ...(name ? { name } : {}) };
  }
  return out;
}
