import { renameSync, rmSync, statSync } from "node:fs";
import { errorMessage } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";
import { isCorrupt, OutboxStore } from "./store.ts";

/** Device and inode of a file, or undefined when there is none: a different value means deleted or replaced. */
export function fileId(path: string): string | undefined {
  try {
    const st = statSync(path);
    return `${st.dev}:${st.ino}`;
  } catch {
    return undefined;
  }
}

/**
 * Opens the database; a corrupt one is renamed to `outbox.db.corrupt-<time>` (kept for inspection) and a
 * fresh one started. `moved` is told where the corrupt file went.
 */
export function openOrMoveAside(
  path: string,
  options: { minId?: number; now: number; logger: Logger; moved: (to: string) => void },
): OutboxStore {
  try {
    return new OutboxStore(path, options.minId);
  } catch (err) {
    if (!isCorrupt(err)) throw err;
    const moved = `${path}.corrupt-${new Date(options.now).toISOString().replace(/[:.]/g, "-")}`;
    renameSync(path, moved);
    for (const suffix of ["-wal", "-shm"]) rmSync(`${path}${suffix}`, { force: true });
    options.logger.error(
      { err: errorMessage(err), moved },
      "outbox database corrupt; moved aside, starting a fresh one",
    );
    options.moved(moved);
    return new OutboxStore(path, options.minId);
  }
}

/** Copies every unacknowledged row of `from` into `to`, and closes `to`. */
export function copyPending(from: OutboxStore, to: OutboxStore): void {
  try {
    const rows = from.pending();
    if (rows.length > 0) to.insert(rows);
  } finally {
    to.close();
  }
}

/** Logs what opening the database found: rows rescued from below a mark (loudly), the backlog to resume. */
export function reportOpened(store: OutboxStore, logger: Logger, quiet: boolean, backlog: number, bytes: number): void {
  const { rescued, purged } = store.report;
  if (rescued > 0) {
    logger.error(
      { rescued },
      "outbox: stored messages were hidden below an acknowledged mark (a defect of versions before 0.2); sending them again",
    );
  }
  const log = quiet ? logger.debug.bind(logger) : logger.info.bind(logger);
  if (backlog > 0 || purged > 0) log({ backlog, bytes, purged }, "outbox: resuming stored messages");
}
