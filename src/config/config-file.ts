import { readFileSync, statSync } from "node:fs";
import { parseDocument } from "yaml";
import { type ConfigProblem, errorLine, render } from "./problems.ts";

/** A config file is a few KiB; a cap keeps a huge one from freezing the agent before validation can say so. */
export const MAX_CONFIG_BYTES = 1024 * 1024;

export function readText(path: string, required: boolean, problems: ConfigProblem[]): string | undefined {
  try {
    const { size } = statSync(path);
    if (size > MAX_CONFIG_BYTES) {
      problems.push({
        path: "(file)",
        expected: "expected a config file of at most 1 MiB",
        found: `${(size / 1024 / 1024).toFixed(1)} MiB in ${path}`,
      });
      return undefined;
    }
    return readFileSync(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT" && !required) return undefined;
    problems.push({
      path: "(file)",
      expected: "expected a readable config file",
      found: `${code ?? "an error"} for ${path}`,
    });
    return undefined;
  }
}

/**
 * The last file parsed, by its exact text: every `config.set` loads the configuration again (file, overrides,
 * environment) to validate the result, and parsing the unchanged file was a fifth of that. A copy is handed
 * out, since the caller merges into it.
 */
let lastParsed: { path: string; text: string; value: Record<string, unknown> } | undefined;

export function parseYaml(text: string, path: string, problems: ConfigProblem[]): Record<string, unknown> | undefined {
  if (lastParsed?.text === text && lastParsed.path === path) return structuredClone(lastParsed.value);
  const value = parseYamlText(text, path, problems);
  lastParsed = value === undefined ? undefined : { path, text, value: structuredClone(value) };
  return value;
}

function parseYamlText(text: string, path: string, problems: ConfigProblem[]): Record<string, unknown> | undefined {
  // YAML 1.2 is a superset of JSON, so one parser takes both formats.
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    for (const e of doc.errors) {
      const at = errorLine(text, e.pos[0], e.message) ?? e.linePos?.[0];
      const what = e.message.split(/ at line \d+/)[0]?.split("\n")[0] ?? e.code;
      problems.push({
        path: "(file)",
        expected: "expected valid YAML or JSON",
        found: `${what}${at ? ` at line ${at.line} column ${at.col}` : ""}`,
        source: `in ${path}`,
      });
    }
    return undefined;
  }
  const value: unknown = doc.toJS();
  if (value === null || value === undefined) return {};
  if (typeof value !== "object" || Array.isArray(value)) {
    problems.push({
      path: "(file)",
      expected: "expected a mapping of sections",
      found: render(value),
      source: `in ${path}`,
    });
    return undefined;
  }
  return value as Record<string, unknown>;
}
