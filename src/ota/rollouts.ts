import { join } from "node:path";
import { z } from "zod";
import { writeFileAtomically } from "../core/files.ts";
import { releaseName } from "../version.ts";
import { outcome, readJournal, updateFiles } from "./journal.ts";
import type { Manifest } from "./manifest.ts";
import { readRecordFile, requestId } from "./root-record.ts";

/**
 * The rollouts this device acted on (issue 26), `state.dir/update/rollouts.json`: (rollout id, release sha256)
 * and the request that started it, written before a byte moves. A rollout's driver asks again with a fresh
 * request whenever it cannot know the first arrived (its own crash, the device offline); the replay guard has
 * forgotten the first once it expired, so this record is what makes the second an answer, never a second run.
 */
export const rolloutId = z.string().regex(/^[A-Za-z0-9_.:-]{1,64}$/);

const entry = z.strictObject({
  rollout: rolloutId,
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  request: requestId,
  at: z.number(),
});
export type RolloutEntry = z.output<typeof entry>;

/** The newest are kept: a driver asks again within its rollout, not 64 rollouts later. */
export const MAX_ROLLOUT_ENTRIES = 64;

const fileSchema = z.strictObject({ entries: z.array(entry).max(MAX_ROLLOUT_ENTRIES) });

export const rolloutsFile = (stateDir: string) => join(stateDir, "update", "rollouts.json");

/** The entry for this rollout and release, if this device acted on it. */
export function actedOn(path: string, rollout: string, sha256: string): RolloutEntry | undefined {
  return readRecordFile(path, fileSchema)?.entries.find((e) => e.rollout === rollout && e.sha256 === sha256);
}

/** Records an entry (the update's directory exists), keeping the newest MAX_ROLLOUT_ENTRIES. */
export function recordRollout(path: string, e: RolloutEntry): void {
  const entries = (readRecordFile(path, fileSchema)?.entries ?? []).filter(
    (x) => !(x.rollout === e.rollout && x.sha256 === e.sha256),
  );
  entries.push(e);
  writeFileAtomically(path, `${JSON.stringify({ entries: entries.slice(-MAX_ROLLOUT_ENTRIES) })}\n`, 0o640);
}

/**
 * What a rollout's request is answered with before anything runs: `current` when this agent already runs the
 * release (its directory is named by the release's hash: the same bytes, not only the same version), `repeat`
 * when this rollout's release was acted on already, with the earlier request and what last came of it (`last`).
 * `record` is called once the request is to act, before a byte moves. `last` is the state this start last
 * reported (with the `id` it answers); before it, the agent's update journal says.
 */
export function rolloutGuard(stateDir: string, self: string | undefined, last: () => Record<string, unknown>) {
  const path = rolloutsFile(stateDir);
  /** What last came of a request: the state this start reported, or the journal's outcome from before. */
  const lastFor = (request: string) => {
    if (last().id === request) return last();
    const j = readJournal(updateFiles(stateDir).journal);
    return j?.request === request ? outcome(j) : undefined;
  };
  return {
    answer(rollout: string, m: Manifest): Record<string, unknown> | undefined {
      if (m.kind === "agent" && self !== undefined && self === releaseName(m.version, m.sha256)) {
        return { state: "current", rollout, version: m.version, sha256: m.sha256 };
      }
      const earlier = actedOn(path, rollout, m.sha256);
      if (!earlier) return undefined;
      const said = lastFor(earlier.request);
      // A download that gave up (its server went away, a driver killed while serving it) installed nothing:
      // it is asked for again, and resumes from what arrived.
      if (said?.state === "failed" && said.code === "OTA_DOWNLOAD_FAILED") return undefined;
      return { state: "repeat", rollout, request: earlier.request, ...(said ? { last: said } : {}) };
    },
    record(rollout: string, m: Manifest, request: string, at: number): void {
      recordRollout(path, { rollout, sha256: m.sha256, request, at });
    },
  };
}
