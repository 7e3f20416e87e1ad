import { OutpostError } from "../core/errors.ts";

/** The outbox database: messages by class, acknowledgement marks, the id high-water mark, dead letters. */
export const SCHEMA = `
CREATE TABLE IF NOT EXISTS messages (
  id       INTEGER PRIMARY KEY,
  session  TEXT    NOT NULL,
  seq      INTEGER NOT NULL,
  priority INTEGER NOT NULL,
  topic    TEXT    NOT NULL,
  payload  TEXT    NOT NULL,
  props    TEXT,
  bytes    INTEGER NOT NULL,
  created  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_priority ON messages (priority, id);
-- Expiry walks each class in id order (ids follow time); an index on created cost every insert and delete.
DROP INDEX IF EXISTS messages_by_created;
-- Per class, the id up to which every row is acknowledged: rows at or below it are gone in all but storage,
-- and are deleted in bulk later. One small update instead of a delete per message while a backlog drains.
CREATE TABLE IF NOT EXISTS marks (
  priority INTEGER PRIMARY KEY,
  acked    INTEGER NOT NULL
);
-- The highest message id ever assigned. Ids are never reused: a row must never land at or below a class's mark,
-- where it would be taken for acknowledged and never fetched (rowid reuse after the table was emptied did that).
CREATE TABLE IF NOT EXISTS meta (
  key   TEXT PRIMARY KEY,
  value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
  id       INTEGER PRIMARY KEY,
  session  TEXT    NOT NULL,
  seq      INTEGER NOT NULL,
  topic    TEXT    NOT NULL,
  payload  TEXT    NOT NULL,
  bytes    INTEGER NOT NULL,
  reason   TEXT    NOT NULL,
  created  INTEGER NOT NULL,
  dead_at  INTEGER NOT NULL
);
`;

/** PRAGMA user_version of a database whose ids come from the high-water mark. */
export const SCHEMA_VERSION = 2;

/** SQLITE_CORRUPT and SQLITE_NOTADB: the file cannot be used again and should be moved aside. */
export function isCorrupt(err: unknown): boolean {
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    const code = (e as { errcode?: unknown }).errcode;
    if (typeof code === "number" && [11, 26].includes(code & 0xff)) return true;
  }
  return false;
}

export function storageError(err: unknown, message: string): OutpostError {
  const detail = err instanceof Error ? err.message : String(err);
  return new OutpostError("OUTBOX_STORAGE", `${message}: ${detail}`, { cause: err });
}
