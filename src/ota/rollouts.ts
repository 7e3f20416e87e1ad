import { join } from "node:path";
import { z } from "zod";
import { writeFileAtomically } from "../core/files.ts";
import { releaseName } from "../version.ts";
import { outcome, readJournal, updateFiles } from "./journal.ts";
import { type Manifest, verifyManifest } from "./manifest.ts";
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
  /** How it ended, once it did: what a restarted agent answers from (its last report was in memory). */
  outcome: z.record(z.string(), z.unknown()).optional(),
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

/** Final states of an update: recorded with the rollout's entry. */
const FINAL = new Set(["committed", "rolled-back", "failed"]);
/** Failures after which nothing was installed and the transfer can go on: such a request runs again. */
const RERUN = new Set(["OTA_DOWNLOAD_FAILED", "TASK_ABORTED"]);

/** Where the device is when a rollout's request arrives. */
export interface Here {
  /** No update under way (not downloading, staged, installing or on trial). */
  idle: boolean;
  /** update.trustedKeys: the request's manifest is verified against them before anything is believed. */
  keys: readonly string[];
  /** For a model release: the version of the task's model now. */
  model: () => string | undefined;
}

/**
 * What a rollout's request is answered with before anything runs, or undefined to run it:
 * - `current`: idle, and already running the release (an agent's release directory is named by the release's
 *   hash, so the same bytes; a model by its version). Never while on trial: the release runs before it proved
 *   healthy.
 * - `repeat`: this rollout's release was acted on already: the earlier request and what last came of it
 *   (`last`), also while that update is under way. After a transfer that gave up, or when nothing is known of
 *   it (the agent restarted mid-download), nothing was installed: it runs again and resumes what arrived.
 * `record` is called once the request is to act, before a byte moves; `saw` with each state reported.
 */
export function rolloutGuard(stateDir: string, self: string | undefined, last: () => Record<string, unknown>) {
  const path = rolloutsFile(stateDir);
  /** What last came of a request: this start's report, the journal's outcome, or the rollout's record. */
  const lastFor = (e: RolloutEntry) => {
    if (last().id === e.request) return last();
    const j = readJournal(updateFiles(stateDir).journal);
    return j?.request === e.request ? outcome(j) : e.outcome;
  };
  return {
    answer(rollout: string, signed: unknown, here: Here): Record<string, unknown> | undefined {
      // A manifest that does not verify (or a task with no model) is the command's to refuse, with its state.
      let m: Manifest;
      let modelVersion: string | undefined;
      try {
        m = verifyManifest(signed, here.keys);
        modelVersion = m.kind === "model" ? here.model() : undefined;
      } catch {
        return undefined;
      }
      const earlier = actedOn(path, rollout, m.sha256);
      const said = earlier ? lastFor(earlier) : undefined;
      const repeat = earlier && {
        state: "repeat",
        rollout,
        request: earlier.request,
        ...(said ? { last: said } : {}),
      };
      // Under way: where it stands. Nothing known of it yet (the module is starting): the busy check answers,
      // and the driver asks again.
      if (!here.idle) return said ? repeat : undefined;
      const runs = m.kind === "agent" ? self === releaseName(m.version, m.sha256) : modelVersion === m.version;
      if (runs) return { state: "current", rollout, version: m.version, sha256: m.sha256 };
      if (said === undefined || (said.state === "failed" && RERUN.has(String(said.code)))) return undefined;
      return repeat;
    },
    record(rollout: string, m: Manifest, request: string, at: number): void {
      recordRollout(path, { rollout, sha256: m.sha256, request, at });
    },
    /**
     * A state reported for `request`: a final one is kept with the rollout's entry that names it. Never throws
     * (a full disk must not stop the state being reported): a lost outcome only means a request runs again.
     */
    saw(request: string, body: Record<string, unknown>): void {
      if (!FINAL.has(String(body.state))) return;
      try {
        const e = readRecordFile(path, fileSchema)?.entries.find((x) => x.request === request);
        if (e) recordRollout(path, { ...e, outcome: { ...body, id: request } });
      } catch {
        // Kept in memory as `last` for this start.
      }
    },
    /**
     * At start, idle: the newest rollout entry with no outcome, that neither the journal nor a pending install
     * names, was cut off by a stop (a crash, a power cut) before anything was installed. Reported as such
     * (retained, naming its request), so that its driver asks again and it runs again.
     */
    interrupted(report: (body: Record<string, unknown>, id: string) => void): void {
      const e = readRecordFile(path, fileSchema)?.entries.at(-1);
      if (!e || e.outcome || readJournal(updateFiles(stateDir).journal)?.request === e.request) return;
      const reason = "the agent stopped during this update, before anything was installed";
      report({ state: "failed", code: "TASK_ABORTED", reason }, e.request);
    },
  };
}
