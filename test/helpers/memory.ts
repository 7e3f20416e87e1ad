import { readFileSync } from "node:fs";

/** A process's RSS and PSS (its anonymous and file-backed parts), in MiB, from /proc/PID/smaps_rollup. */
export function processMemory(pid: number): { rss: number; pss: number; anon: number; file: number } {
  const text = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
  const mib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+)`, "m").exec(text)?.[1] ?? Number.NaN) / 1024;
  return { rss: mib("Rss"), pss: mib("Pss"), anon: mib("Pss_Anon"), file: mib("Pss_File") };
}
