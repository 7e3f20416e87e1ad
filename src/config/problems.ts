import type { z } from "zod";
import { redactUrlPasswords } from "../core/log-scrub.ts";
import { SECRET_KEYS } from "./schema.ts";

/** How much of a value a problem line shows. */
const MAX_FOUND = 80;

/** One thing wrong with a configuration: where, what was expected, what was found, and from which source. */
export interface ConfigProblem {
  path: string;
  expected: string;
  found: string;
  source?: string;
}

/** One line per problem: `mqtt.url: expected ..., found "..." (from OUTPOST_MQTT__URL)`. */
export function formatProblems(problems: readonly ConfigProblem[]): string[] {
  return problems.map((p) => `${p.path}: ${p.expected}, found ${p.found}${p.source ? ` (${p.source})` : ""}`);
}

const TYPE_WORDS: Record<string, string> = {
  string: "text",
  number: "a number",
  int: "a whole number",
  boolean: "true or false",
  array: "a list, like [a, b]",
  object: "a section of keys",
};

/** What to write instead, for every kind of issue the schema can produce. */
export function expectation(issue: z.core.$ZodIssue): string {
  const own = issue.message.startsWith("expected") ? issue.message : undefined;
  switch (issue.code) {
    case "invalid_type":
      return own ?? `expected ${TYPE_WORDS[issue.expected] ?? issue.expected}`;
    case "too_small":
    case "too_big": {
      const bound = issue.code === "too_small" ? issue.minimum : issue.maximum;
      const edge =
        issue.code === "too_small"
          ? issue.inclusive
            ? "at least"
            : "more than"
          : issue.inclusive
            ? "at most"
            : "less than";
      if (issue.origin === "array") return own ?? `expected ${edge} ${bound} items`;
      if (issue.origin === "string") return own ?? `expected ${edge} ${bound} characters`;
      return own ?? `expected a number of ${edge} ${bound}`;
    }
    case "invalid_value":
      return own ?? `expected one of ${issue.values.map((v) => String(v)).join(", ")}`;
    default: {
      const text = issue.message.replace(/^Invalid (input|option):\s*/i, "");
      return text.startsWith("expected") ? text : `expected ${text.charAt(0).toLowerCase()}${text.slice(1)}`;
    }
  }
}

/** A value as a problem line shows it: never a whole section, never a secret. */
export function render(value: unknown, path: readonly string[] = []): string {
  if (value === undefined) return "nothing";
  if (SECRET_KEYS.has(path.at(-1) ?? "")) return "<redacted>";
  if (value !== null && typeof value === "object" && !Array.isArray(value)) return "a section";
  const shown = typeof value === "string" || Array.isArray(value) ? JSON.stringify(value) : String(value);
  const text = redactUrlPasswords(shown);
  return text.length > MAX_FOUND ? `${text.slice(0, MAX_FOUND - 1)}…` : text;
}

/**
 * Where a YAML error really is. The parser notices an unclosed `[` or `{` only where the collection should have
 * ended (often lines later): point at the bracket that was never closed instead.
 */
export function errorLine(text: string, offset: number, message: string): { line: number; col: number } | undefined {
  const open = /^Flow sequence/.test(message) ? "[" : /^Flow mapping/.test(message) ? "{" : undefined;
  if (!open) return undefined;
  const close = open === "[" ? "]" : "}";
  let depth = 0;
  for (let i = Math.min(offset, text.length) - 1; i >= 0; i--) {
    if (text[i] === close) depth += 1;
    else if (text[i] === open) {
      if (depth === 0) {
        const before = text.slice(0, i);
        return { line: before.split("\n").length, col: i - before.lastIndexOf("\n") };
      }
      depth -= 1;
    }
  }
  return undefined;
}
