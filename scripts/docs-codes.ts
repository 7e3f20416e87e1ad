// npm run docs:codes: writes the table of error codes in docs/mqtt-api.md from src/core/codes.ts.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { codesTable } from "../src/core/codes.ts";

export const DOC = join(import.meta.dirname, "..", "docs", "mqtt-api.md");
const START = "<!-- codes:start (generated from src/core/codes.ts by npm run docs:codes) -->";
const END = "<!-- codes:end -->";

/** The document with its codes section replaced by the table the registry gives. */
export function withCodes(doc: string): string {
  const a = doc.indexOf(START);
  const b = doc.indexOf(END);
  if (a < 0 || b < a) throw new Error(`${DOC} has no codes markers`);
  return `${doc.slice(0, a + START.length)}\n\n${codesTable()}\n\n${doc.slice(b)}`;
}

if (import.meta.main) writeFileSync(DOC, withCodes(readFileSync(DOC, "utf8")));
