import { readdir, readFile } from "node:fs/promises";
import { relative } from "node:path";

/** Where a collector reads the host: procfs, sysfs and the rest of the file system (/etc, /var). */
export interface Roots {
  proc: string;
  sys: string;
  /** The root of the host's file system, for /etc and /var files (nv_tegra_release, nvpmodel). */
  host: string;
}

export const HOST_ROOTS: Roots = { proc: "/proc", sys: "/sys", host: "/" };

const round = (n: number, digits: number) => {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
};

/**
 * Reads one sample's files and keeps, per metric, why a file could not be read: the metric is then left out
 * and the reason goes to the sample's `errors` (`<collector>.<metric>`), so a board missing a node or a file
 * the service user may not read never fails the whole collector.
 */
export class Reads {
  readonly errors: Record<string, string> = {};
  private readonly roots: Roots;
  private readonly collector: string;

  constructor(collector: string, roots: Roots) {
    this.collector = collector;
    this.roots = roots;
  }

  /** The trimmed text of a file, or undefined (with the reason kept under `metric`). */
  async text(metric: string, path: string): Promise<string | undefined> {
    try {
      return (await readFile(path, "utf8")).replace(/\0+$/, "").trim();
    } catch (err) {
      this.fail(metric, `${(err as NodeJS.ErrnoException).code ?? "error"}: ${this.shown(path)}`);
      return undefined;
    }
  }

  /** A number read from a file, divided by `scale` and rounded; undefined when absent or not a number. */
  async number(metric: string, path: string, scale = 1, digits = 3): Promise<number | undefined> {
    const text = await this.text(metric, path);
    if (text === undefined) return undefined;
    const n = Number(text);
    if (text === "" || !Number.isFinite(n)) {
      this.fail(metric, `not a number in ${this.shown(path)}: ${JSON.stringify(text.slice(0, 40))}`);
      return undefined;
    }
    return round(n / scale, digits);
  }

  fail(metric: string, reason: string): void {
    this.errors[`${this.collector}.${metric}`] = reason;
  }

  /** The path as the host sees it (/sys/..., /proc/...), whatever root a fixture tree put in front. */
  private shown(path: string): string {
    for (const [name, root] of [
      ["proc", this.roots.proc],
      ["sys", this.roots.sys],
    ] as const) {
      const rel = relative(root, path);
      if (!rel.startsWith("..")) return `/${name}/${rel}`;
    }
    const rel = relative(this.roots.host, path);
    return rel.startsWith("..") ? path : `/${rel}`;
  }
}

/** A small file's trimmed text, or undefined when it cannot be read (for finding nodes, not for metrics). */
export async function readTrimmed(path: string): Promise<string | undefined> {
  try {
    return (await readFile(path, "utf8")).trim();
  } catch {
    return undefined;
  }
}

/** The entries of a directory, sorted; empty when it does not exist or cannot be listed. */
export async function list(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch {
    return [];
  }
}

/**
 * A lookup of where a node lives (a directory scan), remembered for `ttlMs`: board collectors run every sample,
 * and scanning /sys/devices/platform (a hundred entries on a Pi) each time would cost more than the reads.
 * What was not found is looked for again after `ttlMs` too.
 */
export function remembered<T>(find: () => Promise<T>, ttlMs = 60_000, now = () => performance.now()): () => Promise<T> {
  let cached: { value: T; at: number } | undefined;
  return async () => {
    if (cached && now() - cached.at < ttlMs) return cached.value;
    cached = { value: await find(), at: now() };
    return cached.value;
  };
}
