import { join } from "node:path";
import { z } from "zod";
import { writeFileAtomically } from "../core/files.ts";
import { readRecordFile, releaseRef, requestId } from "./root-record.ts";

/**
 * The agent's update journal, `state.dir/update/journal.json`: where an update stands as the agent sees it
 * (its trial, why it gave up, the outcome it reported). Written by the agent only, atomically; root never
 * reads it (root keeps its own record, root-record.ts). An installer older than root's records wrote the
 * trial here: a release adopts such a trial once (docs/ota.md, "The root boundary").
 */
const request = requestId.optional();

const trial = z.strictObject({
  state: z.literal("trial"),
  /** The release directory's name (`<version>-<sha12>`) on trial: what `current` points at during it. */
  release: z.string(),
  from: releaseRef,
  to: releaseRef,
  since: z.number(),
  /** The update request's id (absent in a trial an older installer wrote). */
  request,
  /** Set by the release on trial when it gives up: why it was not healthy in time. */
  failure: z.string().optional(),
});

const settled = z.strictObject({
  state: z.enum(["committed", "rolled-back"]),
  release: z.string(),
  from: releaseRef,
  to: releaseRef,
  at: z.number(),
  request,
  reason: z.string().optional(),
});

const failed = z.strictObject({
  state: z.literal("failed"),
  release: z.string(),
  version: z.string(),
  code: z.string(),
  reason: z.string(),
  at: z.number(),
  request,
});

export const journalSchema = z.discriminatedUnion("state", [trial, settled, failed]);
export type Journal = z.output<typeof journalSchema>;
export type TrialJournal = z.output<typeof trial>;

/** The files of `state.dir/update/`: the agent's; root reads the requests (through a pinned directory) only. */
export function updateFiles(stateDir: string) {
  const dir = join(stateDir, "update");
  return {
    dir,
    journal: join(dir, "journal.json"),
    /** The agent's request to install a staged release (the `.path` unit starts the installer on it). */
    install: join(dir, "install.json"),
    /** The agent's word that its trial passed: the installer ends the trial's unit settings and prunes. */
    commit: join(dir, "commit.request"),
    /** The agent's word that its trial failed: the rollback unit switches back. */
    rollback: join(dir, "rollback.request"),
    ready: (sha256: string) => join(dir, `${sha256}.ready`),
    partial: (sha256: string) => join(dir, `${sha256}.partial`),
  };
}

/** The journal, or undefined when there is none or it is unreadable (a start must never fail on it). */
export function readJournal(path: string): Journal | undefined {
  return readRecordFile(path, journalSchema);
}

export function writeJournal(path: string, journal: Journal, mode = 0o640): void {
  writeFileAtomically(path, `${JSON.stringify(journal)}\n`, mode);
}

/** A settled journal as `P/D/update` shows it. */
export function outcome(j: Journal): Record<string, unknown> {
  const id = j.request ? { id: j.request } : {};
  if (j.state === "failed") return { state: "failed", version: j.version, code: j.code, reason: j.reason, ...id };
  return {
    ...id,
    state: j.state,
    version: j.to.version,
    from: j.from.version,
    ...("reason" in j && j.reason !== undefined ? { reason: j.reason } : {}),
  };
}
