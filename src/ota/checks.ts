import { OutpostError } from "../core/errors.ts";
import type { Manifest } from "./manifest.ts";

/** Semver precedence (2.0.0 section 11): numbers, then a pre-release is lower than its release. */
export function compareVersions(a: string, b: string): number {
  const [coreA = "", preA] = a.split("-", 2);
  const [coreB = "", preB] = b.split("-", 2);
  const na = coreA.split(".").map(Number);
  const nb = coreB.split(".").map(Number);
  for (let i = 0; i < 3; i++) if ((na[i] ?? 0) !== (nb[i] ?? 0)) return (na[i] ?? 0) - (nb[i] ?? 0);
  if (preA === undefined || preB === undefined) return preA === preB ? 0 : preA === undefined ? 1 : -1;
  const pa = preA.split(".");
  const pb = preB.split(".");
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i];
    const y = pb[i];
    if (x === undefined) return -1;
    if (y === undefined) return 1;
    const nx = /^\d+$/.test(x) ? Number(x) : undefined;
    const ny = /^\d+$/.test(y) ? Number(y) : undefined;
    if (nx !== undefined && ny !== undefined) {
      if (nx !== ny) return nx - ny;
    } else if (nx !== undefined) return -1;
    else if (ny !== undefined) return 1;
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
