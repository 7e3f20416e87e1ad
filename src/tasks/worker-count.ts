import { readFileSync } from "node:fs";
import { availableParallelism, totalmem } from "node:os";
import { join } from "node:path";

const MiB = 1024 * 1024;
/** The agent itself at idle (about 100 MiB RSS) and a camera frame's decode (a third of the unit's 384M). */
const AGENT_MIB = 224;
/** One worker holding the shipped model (thread, isolate, runtime arenas, session): +54 MiB measured, rounded up. */
const WORKER_MIB = 64;

/**
 * How much memory the agent may use: the smallest `memory.max` of its cgroup and the cgroups above it (the
 * unit's MemoryMax=, a slice's), when one is set, else three quarters of the machine's memory (the rest is the
 * system's). cgroup v2 only: on v1 or a hybrid host, the machine's.
 */
export function memoryLimit(o: { procRoot?: string; cgroupRoot?: string; total?: number } = {}): {
  bytes: number;
  from: string;
} {
  const total = o.total ?? totalmem();
  try {
    // cgroup v2: one line "0::/system.slice/outpost.service".
    const line = readFileSync(join(o.procRoot ?? "/proc", "self", "cgroup"), "utf8")
      .split("\n")
      .find((l) => l.startsWith("0::"));
    const path = line?.slice(3) ?? "";
    // A path from outside this cgroup namespace ("/../..") is not ours to walk.
    if (line !== undefined && !path.split("/").includes("..")) {
      let least = total;
      for (let at = path; at !== "/" && at !== ""; at = at.slice(0, at.lastIndexOf("/")) || "/") {
        try {
          const max = readFileSync(join(o.cgroupRoot ?? "/sys/fs/cgroup", at, "memory.max"), "utf8").trim();
          if (/^\d+$/.test(max)) least = Math.min(least, Number(max));
        } catch {
          // Not there at this level (the root has none): the levels above may.
        }
      }
      if (least < total) return { bytes: least, from: "the cgroup's memory.max" };
    }
  } catch {
    // No cgroup v2, or not readable: the machine's memory.
  }
  return { bytes: Math.floor(total * 0.75), from: "3/4 of the machine's memory" };
}

/**
 * The default number of task workers: one per core but one (the main thread and the broker need a core too),
 * and no more than fit in memory beside the agent, at least one. A 4-core board under MemoryMax=384M gets 2.
 */
export function defaultWorkers(o: { cores?: number; limit?: { bytes: number; from: string } } = {}): {
  workers: number;
  why: string;
} {
  const cores = o.cores ?? availableParallelism();
  const limit = o.limit ?? memoryLimit();
  const byCores = Math.max(1, cores - 1);
  const byMemory = Math.max(1, Math.floor((limit.bytes / MiB - AGENT_MIB) / WORKER_MIB));
  const workers = Math.min(byCores, byMemory);
  const why =
    byMemory < byCores
      ? `${workers} by memory: ${Math.round(limit.bytes / MiB)} MiB (${limit.from}), ${AGENT_MIB} MiB for the agent, ${WORKER_MIB} MiB a worker`
      : `${workers} by cores: ${cores} cores, one left for the agent and the broker`;
  return { workers, why };
}
