import { readFileSync } from "node:fs";
import { join } from "node:path";

/** memory.stat's fields. */
function statOf(path: string): Record<string, number | undefined> {
  try {
    const out: Record<string, number | undefined> = {};
    for (const line of readFileSync(path, "utf8").split("\n")) {
      const [k, v] = line.split(" ");
      if (k && v && /^\d+$/.test(v)) out[k] = Number(v);
    }
    return out;
  } catch {
    return {};
  }
}

const least = (a: number | undefined, b: number | undefined) =>
  a === undefined ? b : b === undefined ? a : Math.min(a, b);
/** Use less the page cache the kernel reclaims first (inactive file pages): it fills up to the limit in time. */
const less = (usage: number | undefined, reclaimable: number | undefined) =>
  usage === undefined ? undefined : Math.max(0, usage - (reclaimable ?? 0));

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
      const dir = join(root, "memory", v1);
      const stat = statOf(join(dir, "memory.stat"));
      // The lowest limit of the cgroup and those above it (a slice's), as v1 reports it.
      limit = least(bytesIn(join(dir, "memory.limit_in_bytes")), stat.hierarchical_memory_limit);
      usage = less(bytesIn(join(dir, "memory.usage_in_bytes")), stat.total_inactive_file);
    } else if (v2 !== undefined && !v2.split("/").includes("..")) {
      for (let at = v2; at !== "" && at !== "/"; at = at.slice(0, at.lastIndexOf("/")) || "/") {
        limit = least(limit, bytesIn(join(root, at, "memory.max")));
      }
      const stat = statOf(join(root, v2, "memory.stat"));
      usage = less(bytesIn(join(root, v2, "memory.current")), stat.inactive_file);
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
