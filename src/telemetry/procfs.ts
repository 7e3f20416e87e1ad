/** Parsers for the few /proc files telemetry reads every cycle; pure, so fixtures can test them. */

export interface CpuTimes {
  total: number;
  idle: number;
}

/** `cpu` and `cpuN` lines of /proc/stat: the aggregate first, then one per core. */
export function parseProcStat(text: string): { all: CpuTimes; cores: CpuTimes[] } | undefined {
  let all: CpuTimes | undefined;
  const cores: CpuTimes[] = [];
  for (const line of text.split("\n")) {
    const match = /^cpu(\d*)\s+(.*)$/.exec(line);
    if (!match) continue;
    const fields = (match[2] ?? "").trim().split(/\s+/).map(Number);
    // user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is already in user.
    const total = fields.slice(0, 8).reduce((a, b) => a + (Number.isFinite(b) ? b : 0), 0);
    const idle = (fields[3] ?? 0) + (fields[4] ?? 0);
    if (match[1] === "") all = { total, idle };
    else cores.push({ total, idle });
  }
  return all ? { all, cores } : undefined;
}

/** Busy percentage between two readings; 0 when no time passed. */
export function busyPercent(before: CpuTimes | undefined, after: CpuTimes): number {
  const total = after.total - (before?.total ?? 0);
  const idle = after.idle - (before?.idle ?? 0);
  if (total <= 0) return 0;
  return Math.min(100, Math.max(0, (1 - idle / total) * 100));
}

/** Byte counters per interface from /proc/net/dev. */
export function parseNetDev(text: string): Record<string, { rxBytes: number; txBytes: number }> {
  const out: Record<string, { rxBytes: number; txBytes: number }> = {};
  for (const line of text.split("\n")) {
    const match = /^\s*([^:\s]+):\s*(.*)$/.exec(line);
    if (!match?.[1]) continue;
    const fields = (match[2] ?? "").trim().split(/\s+/).map(Number);
    const rx = fields[0];
    const tx = fields[8];
    if (rx === undefined || tx === undefined || !Number.isFinite(rx) || !Number.isFinite(tx)) continue;
    out[match[1]] = { rxBytes: rx, txBytes: tx };
  }
  return out;
}

/** /proc/meminfo as systeminformation's `mem()` reported it (bytes; `active` = total - available). */
export function parseMeminfo(text: string): {
  total: number;
  active: number;
  available: number;
  swaptotal: number;
  swapused: number;
} {
  const kib = (key: string) => {
    const match = new RegExp(`^${key}:\\s+(\\d+)`, "m").exec(text);
    return match ? Number(match[1]) * 1024 : undefined;
  };
  const total = kib("MemTotal") ?? 0;
  const free = kib("MemFree") ?? 0;
  const buffcache = (kib("Buffers") ?? 0) + (kib("Cached") ?? 0) + (kib("SReclaimable") ?? 0);
  const available = kib("MemAvailable") || free + buffcache;
  const swaptotal = kib("SwapTotal") ?? 0;
  return { total, active: total - available, available, swaptotal, swapused: swaptotal - (kib("SwapFree") ?? 0) };
}
