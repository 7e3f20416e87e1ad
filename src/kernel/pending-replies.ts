import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import type { PendingReply } from "../commands/commands.ts";
import { errorMessage } from "../core/errors.ts";
import { writeFileAtomically } from "../core/files.ts";
import type { Logger } from "../core/logger.ts";

/** The final reply of a `restart`, kept in state.dir until the next process has sent it. */
const PENDING_FILE = "pending-replies.json";

const pendingRecord = z.object({
  reply: z.object({
    id: z.string(),
    command: z.string(),
    topic: z.string(),
    correlationData: z.string().optional(),
    request: z.string().optional(),
    requestTopic: z.string().optional(),
  }),
  session: z.string(),
  ts: z.number(),
});

type PendingRecord = z.output<typeof pendingRecord> & { reply: PendingReply };

/**
 * A `restart` is answered by the process that comes up after it: the request's reply is kept on disk before
 * the restart is acted on, and the next start sends it with the real outcome.
 */
export class PendingReplies {
  private readonly path: string;
  private readonly logger: Logger;

  constructor(stateDir: string, logger: Logger) {
    this.path = join(stateDir, PENDING_FILE);
    this.logger = logger;
  }

  /** Keeps the reply for the next process; false (logged) when it could not be written. */
  keep(record: PendingRecord): boolean {
    try {
      writeFileAtomically(this.path, `${JSON.stringify(record)}\n`);
      return true;
    } catch (err) {
      this.logger.error({ err: errorMessage(err) }, "could not keep the restart request; no final reply will come");
      return false;
    }
  }

  /** The reply the previous process kept, removed from disk; undefined when there is none (or it is unreadable). */
  take(): PendingRecord | undefined {
    let text: string;
    try {
      text = readFileSync(this.path, "utf8");
    } catch {
      return undefined;
    }
    rmSync(this.path, { force: true });
    try {
      const record = pendingRecord.safeParse(JSON.parse(text));
      if (record.success) return record.data;
    } catch {
      // Reported below, like a record of the wrong shape.
    }
    this.logger.warn({ file: this.path }, "an unreadable restart record was dropped; its request gets no final reply");
    return undefined;
  }
}
