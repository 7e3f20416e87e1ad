import { readFileSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";

/**
 * Root's own record of an update, in `/opt/outpost/update/` (docs/ota.md, "The root boundary"): a directory
 * of root's with no ancestor the agent can write, outside the `Z /var/lib/outpost` tmpfiles line, on the
 * same persistent file system as the releases. The agent reads it and never writes it; root never acts on
 * what the agent's journal says.
 *
 * - `trial.json`: the trial root started (written before `current` moves), then how it ended: `committed`
 *   (update-apply, on the agent's commit request) or `rolled-back` (the rollback script, in sh: it matches
 *   `{"state":"trial","release":"` at the start of the line, so those two keys come first, in that order).
 * - `request.json`: the last install request root handled, by its id, and what came of it: a request whose
 *   id is there is never acted on again, only removed.
 */
export const ROOT_RECORD_FILES = { trial: "trial.json", request: "request.json" } as const;

export const releaseRef = z.strictObject({ name: z.string(), version: z.string() });

/** The id of the update request (the command's request id); "legacy" for a trial an older installer began. */
export const requestId = z.string().regex(/^[A-Za-z0-9_.:-]{1,128}$/);

const trialBase = {
  release: z.string(),
  from: releaseRef,
  to: releaseRef,
  since: z.number(),
  request: requestId,
};

export const trialRecordSchema = z.discriminatedUnion("state", [
  z.strictObject({ state: z.literal("trial"), ...trialBase }),
  z.strictObject({ state: z.literal("committed"), ...trialBase, at: z.number() }),
  // Written by the rollback script: the reason is systemd's words or the agent's request.
  z.strictObject({ state: z.literal("rolled-back"), ...trialBase, reason: z.string(), at: z.number() }),
]);
export type TrialRecord = z.output<typeof trialRecordSchema>;

export const requestRecordSchema = z.strictObject({
  /** Absent when the request could not even be parsed. */
  request: requestId.optional(),
  state: z.enum(["installed", "failed"]),
  release: z.string(),
  version: z.string(),
  code: z.string().optional(),
  reason: z.string().optional(),
  at: z.number(),
});
export type RequestRecord = z.output<typeof requestRecordSchema>;

export function rootRecordPaths(dir: string) {
  return { dir, trial: join(dir, ROOT_RECORD_FILES.trial), request: join(dir, ROOT_RECORD_FILES.request) };
}

/** A record, or undefined when missing or unreadable (the agent must never fail to start on it). */
export function readRecord<T>(text: string | undefined, schema: z.ZodType<T>): T | undefined {
  if (text === undefined) return undefined;
  try {
    const parsed = schema.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/** A record file, or undefined when it is missing or does not hold one. */
export function readRecordFile<T>(path: string, schema: z.ZodType<T>): T | undefined {
  let text: string | undefined;
  try {
    text = readFileSync(path, "utf8");
  } catch {
    text = undefined;
  }
  return readRecord(text, schema);
}

/** For the agent: root's records in `dir` (root writes them atomically). */
export function readRootRecords(dir: string): { trial?: TrialRecord; request?: RequestRecord } {
  const paths = rootRecordPaths(dir);
  const trial = readRecordFile(paths.trial, trialRecordSchema);
  const request = readRecordFile(paths.request, requestRecordSchema);
  return { ...(trial ? { trial } : {}), ...(request ? { request } : {}) };
}
