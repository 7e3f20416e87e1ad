import { readFileSync } from "node:fs";
import { join } from "node:path";

/** What a file holds as a number of bytes, or undefined ("max", missing, unreadable). */
function bytesIn(path: string): number | undefined {
  try {
    const text = readFileSync(path, "utf8").trim();
    return /^\d+$/.test(text) ? Number(text) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The memory this process may still take: its cgroup's limit less what the cgroup uses now (the unit's
 * MemoryMax=: cgroup v2 `memory.max`/`memory.current`, v1 `memory.limit_in_bytes`/`memory.usage_in_bytes`),
 * and never more than the machine's MemAvailable. A v1 limit of "no limit" is a huge number: counted as none.
 */
export function memoryRoom(o: { procRoot?: string; cgroupRoot?: string } = {}): {
  room: number;
  limit?: number;
  usage?: number;
  available?: number;
} {
  const proc = o.procRoot ?? "/proc";
  const root = o.cgroupRoot ?? "/sys/fs/cgroup";
  let limit: number | undefined;
  let usage: number | undefined;
  try {
    const lines = readFileSync(join(proc, "self", "cgroup"), "utf8").split("\n");
    const v2 = lines.find((l) => l.startsWith("0::"))?.slice(3);
    const v1 = lines.find((l) => /^\d+:([^:]*,)?memory(,[^:]*)?:/.test(l))?.replace(/^\d+:[^:]*:/, "");
    // A path from outside this cgroup namespace ("/../..") is not ours to read.
    if (v1 !== undefined && !v1.split("/").includes("..")) {
      limit = bytesIn(join(root, "memory", v1, "memory.limit_in_bytes"));
      usage = bytesIn(join(root, "memory", v1, "memory.usage_in_bytes"));
    } else if (v2 !== undefined && !v2.split("/").includes("..")) {
      limit = bytesIn(join(root, v2, "memory.max"));
      usage = bytesIn(join(root, v2, "memory.current"));
    }
  } catch {
    // No cgroup to read: the machine's memory alone.
  }
  if (limit !== undefined && limit >= 2 ** 60) limit = undefined;
  let available: number | undefined;
  try {
    const kb = /^MemAvailable:\s+(\d+) kB/m.exec(readFileSync(join(proc, "meminfo"), "utf8"))?.[1];
    available = kb === undefined ? undefined : Number(kb) * 1024;
  } catch {
    available = undefined;
  }
  const inCgroup = limit === undefined ? Number.POSITIVE_INFINITY : limit - (usage ?? limit);
  const room = Math.max(0, Math.min(inCgroup, available ?? Number.POSITIVE_INFINITY));
  return {
    room: Number.isFinite(room) ? room : 0,
    ...(limit === undefined ? {} : { limit }),
    ...(usage === undefined ? {} : { usage }),
    ...(available === undefined ? {} : { available }),
  };
}
