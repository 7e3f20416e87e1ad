import { readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { errorMessage, isOutpostError, OutpostError } from "../core/errors.ts";

// The agent's update directory (`state.dir/update/`): downloads, the staged release and the install request.

/** How long a partial download is kept for a retry across restarts (a reboot mid-download on a metered link). */
const PARTIAL_KEEP_MS = 24 * 3600_000;

/** A staged release (`<sha256>.ready`) or a partial download (`<sha256>.partial`) in the update directory. */
export const STAGED = /^[0-9a-f]{64}\.(ready|partial)$/;
const isPartial = (name: string) => STAGED.exec(name)?.[1] === "partial";

/**
 * The agent's own install request (`install.json`): its id (a restart while root has not answered yet) and the
 * staged file it names, each when it is one.
 */
export function readInstall(path: string): { id?: string; ready?: string } {
  try {
    const r = JSON.parse(readFileSync(path, "utf8")) as { id?: unknown; ready?: unknown };
    return {
      ...(typeof r.id === "string" ? { id: r.id } : {}),
      ...(typeof r.ready === "string" && STAGED.exec(r.ready)?.[1] === "ready" ? { ready: r.ready } : {}),
    };
  } catch {
    return {};
  }
}

export function removeStaged(install: string): void {
  const { ready } = readInstall(install);
  if (ready) rmSync(join(dirname(install), ready), { force: true });
}

/**
 * At start: a staged `.ready` that no pending install request names, and every `.partial` but the newest one
 * younger than a day (kept so a retry resumes), are removed: a failed update leaves at most one partial file,
 * for at most a day, and never a staged release nobody takes.
 */
export function sweepStaging(dir: string, keepReady: string | undefined, now: number): void {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  const partials = names
    .filter(isPartial)
    .map((n) => ({ n, mtime: statSync(join(dir, n), { throwIfNoEntry: false })?.mtimeMs ?? 0 }))
    .sort((a, b) => b.mtime - a.mtime);
  const keep = partials[0] && now - partials[0].mtime < PARTIAL_KEEP_MS ? partials[0].n : undefined;
  for (const n of names) {
    const kind = STAGED.exec(n)?.[1];
    if ((kind === "ready" && n !== keepReady) || (kind === "partial" && n !== keep))
      rmSync(join(dir, n), { force: true });
  }
}

/**
 * What an update that did not reach the installer failed with, as an error with a code (the reply and the
 * update state say the same). Cut off by the agent's own stop (a restart, a shutdown), nothing was installed:
 * TASK_ABORTED, as after a crash, so that a rollout's driver asks again; a transfer that failed otherwise is
 * OTA_DOWNLOAD_FAILED (asked again too). Before, an abort went out as COMMAND_FAILED, which a driver took for
 * a final failure.
 */
export function downloadFailure(err: unknown, aborted: boolean): OutpostError {
  const transfer = !isOutpostError(err) || err.code === "OTA_DOWNLOAD_FAILED";
  if (aborted && transfer) return new OutpostError("TASK_ABORTED", errorMessage(err), { cause: err });
  return isOutpostError(err) ? err : new OutpostError("OTA_DOWNLOAD_FAILED", errorMessage(err), { cause: err });
}
