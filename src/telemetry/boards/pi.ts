import { join } from "node:path";
import type { PiMetrics, ThrottleFlags } from "../../kernel/telemetry-port.ts";
import { list, type Reads, type Roots, readTrimmed, remembered } from "../sysfs.ts";

/**
 * Decodes the firmware's throttling word (`vcgencmd get_throttled`) into names: bits 0-3 hold now, bits
 * 16-19 have happened since boot.
 */
export function decodeThrottled(word: number): { now: ThrottleFlags; sinceBoot: ThrottleFlags } {
  const pick = (shift: number): ThrottleFlags => {
    const bit = (n: number) => (word & (1 << (n + shift))) !== 0;
    return { underVoltage: bit(0), armFrequencyCapped: bit(1), throttled: bit(2), softTempLimit: bit(3) };
  };
  return { now: pick(0), sinceBoot: pick(16) };
}

/**
 * Where the firmware driver exposes `get_throttled`: `soc:firmware` on the Pi 1-4; other SoC node names on
 * newer device trees, so every `*firmware` node one or two levels under /sys/devices/platform is tried.
 */
async function throttledFile(sys: string): Promise<string | undefined> {
  const platform = join(sys, "devices", "platform");
  const candidates = [join(platform, "soc", "soc:firmware")];
  for (const a of await list(platform)) {
    if (a.endsWith("firmware")) candidates.push(join(platform, a));
    for (const b of await list(join(platform, a))) if (b.endsWith("firmware")) candidates.push(join(platform, a, b));
  }
  for (const dir of candidates) if ((await list(dir)).includes("get_throttled")) return join(dir, "get_throttled");
  return undefined;
}

/** The hwmon device of the firmware's voltage monitor (`rpi_volt`), whose `in0_lcrit_alarm` is under-voltage now. */
async function voltHwmon(sys: string): Promise<string | undefined> {
  const dir = join(sys, "class", "hwmon");
  for (const entry of await list(dir)) {
    if ((await readTrimmed(join(dir, entry, "name"))) === "rpi_volt") return join(dir, entry);
  }
  return undefined;
}

/**
 * Raspberry Pi figures from sysfs alone, no `vcgencmd` spawn: throttling and under-voltage (the firmware's
 * `get_throttled` word, decoded; or, on kernels without it, the `rpi_volt` hwmon alarm for under-voltage now),
 * and the ARM clock (cpufreq). The SoC temperature is the `cpu-thermal` zone of the temperature collector.
 * The core voltage is not in sysfs: only the firmware mailbox (/dev/vcio, group `video`) has it.
 */
export function piMetrics(roots: Roots): (reads: Reads) => Promise<PiMetrics> {
  const where = remembered(async () => ({ file: await throttledFile(roots.sys), hwmon: await voltHwmon(roots.sys) }));
  return async (reads) => {
    const { file, hwmon } = await where();
    return piFigures(roots, reads, file, hwmon);
  };
}

async function piFigures(
  roots: Roots,
  reads: Reads,
  file: string | undefined,
  hwmon: string | undefined,
): Promise<PiMetrics> {
  const out: PiMetrics = {};
  if (file) {
    const text = await reads.text("throttled", file);
    if (text !== undefined) {
      const word = Number.parseInt(text.replace(/^0x/i, ""), 16);
      if (Number.isFinite(word)) Object.assign(out, decodeThrottled(word));
      else reads.fail("throttled", `not a hex word in /sys/.../get_throttled: ${JSON.stringify(text.slice(0, 20))}`);
    }
  } else if (hwmon) {
    const alarm = await reads.number("throttled", join(hwmon, "in0_lcrit_alarm"));
    if (alarm !== undefined) out.now = { underVoltage: alarm !== 0 };
  } else {
    reads.fail("throttled", "neither get_throttled nor the rpi_volt hwmon is exposed by this kernel");
  }
  const khz = await reads.number(
    "armClockMHz",
    join(roots.sys, "devices", "system", "cpu", "cpu0", "cpufreq", "scaling_cur_freq"),
    1000,
    0,
  );
  if (khz !== undefined) out.armClockMHz = khz;
  return out;
}
