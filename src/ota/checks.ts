import { OutpostError } from "../core/errors.ts";
import type { Manifest } from "./manifest.ts";

/** Compares numeric identifiers of any length (beyond 2^53 too): no leading zeros, so longer is larger. */
const compareNumeric = (x: string, y: string) =>
  x.length !== y.length ? x.length - y.length : x < y ? -1 : x > y ? 1 : 0;

/**
 * Semver precedence (2.0.0 section 11): major, minor, patch numerically; a pre-release (everything after the
 * first hyphen, hyphens inside identifiers included) is lower than its release and compared identifier by
 * identifier; build metadata (after `+`) does not count.
 */
export function compareVersions(a: string, b: string): number {
  const split = (v: string) => {
    const bare = v.split("+", 1)[0] ?? "";
    const dash = bare.indexOf("-");
    return dash < 0 ? { core: bare, pre: undefined } : { core: bare.slice(0, dash), pre: bare.slice(dash + 1) };
  };
  const A = split(a);
  const B = split(b);
  const na = A.core.split(".");
  const nb = B.core.split(".");
  for (let i = 0; i < 3; i++) {
    const c = compareNumeric(na[i] ?? "0", nb[i] ?? "0");
    if (c !== 0) return c;
  }
  if (A.pre === undefined || B.pre === undefined) return A.pre === B.pre ? 0 : A.pre === undefined ? 1 : -1;
  const pa = A.pre.split(".");
  const pb = B.pre.split(".");
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i];
    const y = pb[i];
    if (x === undefined) return -1;
    if (y === undefined) return 1;
    const numX = /^\d+$/.test(x);
    const numY = /^\d+$/.test(y);
    if (numX && numY) {
      const c = compareNumeric(x, y);
      if (c !== 0) return c;
    } else if (numX) return -1;
    else if (numY) return 1;
    else if (x !== y) return x < y ? -1 : 1;
  }
  return 0;
}

export interface Device {
  /** What this update may be: the agent itself, or a task's model. */
  kind?: "agent" | "model";
  /** The running agent's, or the task's current model's version (none: a model that came with the config). */
  version: string | undefined;
  arch: string;
  freeBytes: number;
  maxSize: number;
}

/**
 * Everything checked before a byte is downloaded, each refusal with its code: kind, arch, a newer version (or
 * a downgrade the signed manifest allows), the minimum version it updates from, its size, the free disk.
 */
export function checkRelease(m: Manifest, d: Device): void {
  const kind = d.kind ?? "agent";
  if (m.kind !== kind) throw new OutpostError("OTA_KIND_UNSUPPORTED", `a ${m.kind} release where ${kind} was expected`);
  if (m.target.arch !== "any" && m.target.arch !== d.arch) {
    throw new OutpostError(
      "OTA_WRONG_ARCH",
      `the release is for linux-${m.target.arch}, this device is linux-${d.arch}`,
    );
  }
  if (d.version !== undefined && compareVersions(m.version, d.version) <= 0 && !m.allowDowngrade) {
    throw new OutpostError("OTA_DOWNGRADE", `${m.version} is not newer than the running ${d.version}`);
  }
  if (m.minVersion !== undefined && d.version !== undefined && compareVersions(d.version, m.minVersion) < 0) {
    throw new OutpostError("OTA_TOO_OLD", `${m.version} updates from ${m.minVersion} or later; this is ${d.version}`);
  }
  if (m.size > d.maxSize) throw new OutpostError("OTA_TOO_LARGE", `${m.size} bytes, update.maxSize is ${d.maxSize}`);
  // Room for the partial file and a margin, so that an update never fills the disk the outbox needs.
  const needed = m.size + Math.max(m.size / 10, 16 * 1024 * 1024);
  if (d.freeBytes < needed) {
    throw new OutpostError("OTA_DISK_FULL", `${d.freeBytes} bytes free in state.dir, ${Math.ceil(needed)} needed`);
  }
}
