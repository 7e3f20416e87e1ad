import { readFileSync } from "node:fs";
import { readFile, statfs } from "node:fs/promises";
import { join } from "node:path";
import { writeFileAtomically } from "../core/files.ts";
import { list, type Reads, type Roots } from "./sysfs.ts";

export interface DiskCounters {
  readBytes: number;
  writeBytes: number;
  /** Milliseconds the device had I/O in flight. */
  busyMs: number;
}

/** Whole disks, not partitions or virtual devices (loop, ram, zram, dm). */
const DISK = /^(sd[a-z]+|hd[a-z]+|vd[a-z]+|xvd[a-z]+|mmcblk\d+|nvme\d+n\d+)$/;

/** /proc/diskstats: sectors are 512 bytes whatever the device's block size (Documentation/admin-guide/iostats.rst). */
export function parseDiskstats(text: string): Record<string, DiskCounters> {
  const out: Record<string, DiskCounters> = {};
  for (const line of text.split("\n")) {
    const f = line.trim().split(/\s+/);
    const name = f[2];
    if (!name || !DISK.test(name) || f.length < 14) continue;
    const n = (i: number) => Number(f[i]);
    out[name] = { readBytes: n(5) * 512, writeBytes: n(9) * 512, busyMs: n(12) };
  }
  return out;
}

/** Rates between two readings `ms` apart: bytes per second and the share of time the disk was busy. */
export function diskRates(
  before: Record<string, DiskCounters>,
  after: Record<string, DiskCounters>,
  ms: number,
): Record<string, { readBytesPerS: number; writeBytesPerS: number; busyPercent: number }> {
  const out: Record<string, { readBytesPerS: number; writeBytesPerS: number; busyPercent: number }> = {};
  if (ms <= 0) return out;
  for (const [name, b] of Object.entries(after)) {
    const a = before[name];
    if (!a) continue;
    const rate = (x: number, y: number) => Math.max(0, Math.round(((y - x) * 1000) / ms));
    out[name] = {
      readBytesPerS: rate(a.readBytes, b.readBytes),
      writeBytesPerS: rate(a.writeBytes, b.writeBytes),
      busyPercent: Math.min(100, Math.max(0, Math.round(((b.busyMs - a.busyMs) / ms) * 1000) / 10)),
    };
  }
  return out;
}

/** Disk I/O rates since the previous sample; nothing on the first. */
export function diskIoCollector(roots: Roots, now: () => number) {
  let previous: { at: number; counters: Record<string, DiskCounters> } | undefined;
  return async () => {
    const counters = parseDiskstats(await readFile(join(roots.proc, "diskstats"), "utf8"));
    const at = now();
    const rates = previous ? diskRates(previous.counters, counters, at - previous.at) : undefined;
    previous = { at, counters };
    return rates && Object.keys(rates).length > 0 ? rates : null;
  };
}

/** Size and use of the file system holding `path` (state.dir: a card filling up is an outage). */
export async function filesystemOf(path: string): Promise<Record<string, unknown>> {
  const st = await statfs(path);
  const size = st.blocks * st.bsize;
  const used = (st.blocks - st.bfree) * st.bsize;
  const free = st.bavail * st.bsize;
  return {
    path,
    size,
    used,
    free,
    usePercent: used + free > 0 ? Math.round((used / (used + free)) * 1000) / 10 : 0,
    inodesFree: st.ffree,
  };
}

/**
 * eMMC wear from the MMC core's attributes (Documentation/mmc/mmc-dev-attrs.rst): `life_time` is two JEDEC
 * estimates (type A and B cells) in steps of 10% of the rated life (0x01 = 0-10% used ... 0x0B = exceeded),
 * `pre_eol_info` the reserved blocks (0x01 normal, 0x02 warning: 80% used, 0x03 urgent). SD cards expose
 * neither: they are listed with their type only.
 */
export async function wear(roots: Roots, reads: Reads): Promise<Record<string, unknown> | null> {
  const block = join(roots.sys, "block");
  const out: Record<string, unknown> = {};
  for (const name of await list(block)) {
    if (!/^mmcblk\d+$/.test(name)) continue;
    const device = join(block, name, "device");
    const entries = await list(device);
    const type = entries.includes("type") ? await reads.text(`${name}.type`, join(device, "type")) : undefined;
    const info: Record<string, unknown> = { type: type ?? "unknown" };
    if (entries.includes("life_time")) {
      const text = await reads.text(`${name}.lifeUsedPercent`, join(device, "life_time"));
      const [a, b] = (text ?? "").split(/\s+/).map((h) => Number.parseInt(h, 16));
      if (a !== undefined && b !== undefined && Number.isFinite(a) && Number.isFinite(b)) {
        // The upper bound of each step: 0x01 means "up to 10%"; 0x0B "exceeded" reads as 110.
        info.lifeUsedPercent = { a: a * 10, b: b * 10 };
      }
    }
    if (entries.includes("pre_eol_info")) {
      const text = await reads.text(`${name}.preEol`, join(device, "pre_eol_info"));
      const level = Number.parseInt(text ?? "", 16);
      if (Number.isFinite(level)) info.preEol = ["undefined", "normal", "warning", "urgent"][level] ?? `0x${level}`;
    }
    out[name] = info;
  }
  return Object.keys(out).length > 0 ? out : null;
}

/**
 * The agent's starts, kept in state.dir: `starts` since the state was made, and `unclean`, the starts that
 * found the previous run had not stopped cleanly (a crash, a SIGKILL, a power cut, the watchdog).
 */
export class RunLedger {
  readonly starts: number;
  readonly unclean: number;
  readonly previousUnclean: boolean;
  private readonly path: string;

  constructor(stateDir: string) {
    this.path = join(stateDir, "runs.json");
    let record = { starts: 0, unclean: 0, running: false };
    try {
      record = { ...record, ...(JSON.parse(readFileSync(this.path, "utf8")) as Partial<typeof record>) };
    } catch {
      // first start, or an unreadable record: count from here
    }
    this.previousUnclean = record.running;
    this.starts = record.starts + 1;
    this.unclean = record.unclean + (record.running ? 1 : 0);
    this.write(true);
  }

  /** Marks this run as stopped cleanly. */
  stopped(): void {
    this.write(false);
  }

  private write(running: boolean): void {
    try {
      writeFileAtomically(this.path, `${JSON.stringify({ starts: this.starts, unclean: this.unclean, running })}\n`);
    } catch {
      // state.dir not writable: the kernel's outbox and replay alarms say so; the count is best effort
    }
  }
}
