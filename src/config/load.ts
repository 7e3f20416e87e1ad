import { createHash } from "node:crypto";
import { accessSync, constants } from "node:fs";
import type { z } from "zod";
import { errorMessage, OutpostError } from "../core/errors.ts";
import { isObject, valueAt } from "../core/merge.ts";
import { readPasswordFile } from "../mqtt/options.ts";
import type { Config } from "../schema.ts";
import { MAX_CONFIG_BYTES, parseYaml, readText } from "./config-file.ts";
import type { ConfigModel } from "./model.ts";
import { dottedPath, leafPaths, leaves, mergePatch } from "./paths.ts";
import { redact } from "./redact.ts";
import { childOf, coerce, knownKeys, type SchemaNode, type Typed, typedView } from "./schema-walk.ts";

export { dottedPath, leafPaths, leaves, mergePatch, originOf } from "./paths.ts";

export { MAX_CONFIG_BYTES, redact };

import { type ConfigProblem, expectation, formatProblems, render } from "./problems.ts";

export { type ConfigProblem, formatProblems };

export interface LoadOptions {
  /** The file's schema and key rules, from the root (src/schema.ts CONFIG_MODEL). */
  model: ConfigModel;
  /** Config file (YAML or JSON). */
  path?: string;
  /** When false, a missing file means "defaults and environment only". */
  required?: boolean;
  env?: Readonly<Record<string, string | undefined>>;
  hostname: string;
  /** Remote changes (`config.set`), merged over the file and under the environment. */
  overrides?: { values: Record<string, unknown>; source: string };
  /**
   * The change being tried (`config.set`), already merged into `overrides`: problems at its paths name its
   * source (the request) instead of the overrides file.
   */
  patch?: { values: Record<string, unknown>; source: string };
}

export interface LoadedConfig {
  config: Config;
  /** The same values as modules read them: durations in milliseconds, sizes in bytes. */
  typed: Typed<Config>;
  /** sha256 of the effective config with secrets redacted, so that it can be published. */
  hash: string;
  file?: string;
  envKeys: string[];
  /** Where each value came from, by dotted path: `in FILE`, `in OVERRIDES`, `from OUTPOST_X`; absent = default. */
  origins: Map<string, string>;
}

export const ENV_PREFIX = "OUTPOST_";
/** Variables of the project's own tools, not config keys. */
const OWN_VARIABLES = [/^OUTPOST_NODE$/, /^OUTPOST_CTL_/];

/**
 * OUTPOST_ variables that cannot be config keys (no double underscore) and are not the tools' own: most
 * often a single underscore where nesting needs two. Worth a warning, since they are otherwise ignored.
 */
export function unknownEnvVars(env: Readonly<Record<string, string | undefined>>): string[] {
  return Object.keys(env)
    .filter((n) => n.startsWith(ENV_PREFIX) && !n.includes("__") && !OWN_VARIABLES.some((own) => own.test(n)))
    .sort();
}

/** Loads, merges (file, then environment) and validates a configuration. Throws CONFIG_INVALID. */
export function loadConfig(options: LoadOptions): LoadedConfig {
  const problems: ConfigProblem[] = [];
  let raw: Record<string, unknown> = {};
  let file: string | undefined;

  if (options.path !== undefined) {
    const text = readText(options.path, options.required ?? true, problems);
    if (text !== undefined) {
      file = options.path;
      const parsed = parseYaml(text, options.path, problems);
      if (parsed !== undefined) raw = parsed;
    }
  }

  // Key path -> where its value came from, for the problem lines ("from OUTPOST_X", "in overrides.json").
  const sources = new Map<string, string>();
  const fileLeaves = file ? leafPaths(raw) : [];
  if (options.overrides) {
    raw = mergePatch(raw, options.overrides.values) as Record<string, unknown>;
    // A removal (null) sets nothing: what is left there comes from the file or the default.
    for (const { segments, value } of leaves(options.overrides.values)) {
      if (value !== null) sources.set(dottedPath(segments), `in ${options.overrides.source}`);
    }
  }
  if (options.patch) {
    // As for the overrides: a removal sets nothing, and must not be taken for where a value came from.
    for (const { segments, value } of leaves(options.patch.values)) {
      if (value !== null) sources.set(dottedPath(segments), `in ${options.patch.source}`);
    }
  }
  const envKeys: string[] = [];
  const wholes = new Set<string>();
  applyEnv(options.model.schema, raw, options.env ?? {}, sources, envKeys, problems, wholes);

  const result = options.model.schema.safeParse(raw, { reportInput: true });
  if (!result.success) {
    for (const issue of result.error.issues)
      problems.push(...describeIssue(options.model.schema, issue, raw, sources, file));
  }
  // The files are checked in the same pass as the schema, so that one run names every problem.
  const rawMqtt = isObject(raw.mqtt) ? raw.mqtt : {};
  const password = resolveFiles(rawMqtt, problems, sources, file);
  if (!result.success || problems.length > 0) throw invalid(problems);

  const parsed = result.data;
  const deviceId = parsed.device.id ?? sanitizeHostname(options.hostname);
  const config: Config = { ...parsed, device: { ...parsed.device, id: deviceId } };
  if (password !== undefined) config.mqtt.password = password;

  const origins = new Map<string, string>(fileLeaves.map((p) => [p, `in ${file}`]));
  // A change being tried is in the overrides once it applies: that file is where its values come from.
  const patchSource = options.patch ? `in ${options.patch.source}` : undefined;
  const overridesSource = options.overrides ? `in ${options.overrides.source}` : undefined;
  for (const [path, named] of sources) {
    const source = named === patchSource && overridesSource ? overridesSource : named;
    // A later source that sets a whole section or record replaces what was under it.
    for (const key of origins.keys()) if (key.startsWith(`${path}.`)) origins.delete(key);
    // ... and names its own leaves (set next), not the section: a default filled in beside them is a default.
    if (!wholes.has(path)) origins.set(path, source);
  }
  // Built here, before anything is stored or swapped: a value the schema passed that cannot be converted is a
  // problem of this configuration, never a crash of the store or of the next start.
  let typed: Typed<Config>;
  try {
    typed = typedView(options.model.schema, config);
  } catch (err) {
    throw invalid([{ path: "(root)", expected: "values the agent can use", found: errorMessage(err) }]);
  }
  return { config, typed, hash: hashConfig(config), file, envKeys, origins };
}

export function hashConfig(config: Config): string {
  return createHash("sha256")
    .update(canonicalJson(redact(config)))
    .digest("hex");
}

function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

function invalid(problems: ConfigProblem[]): OutpostError {
  return new OutpostError("CONFIG_INVALID", `invalid configuration:\n${formatProblems(problems).join("\n")}`, {
    details: problems,
  });
}

function snakeToCamel(segment: string): string {
  return segment.toLowerCase().replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

function applyEnv(
  schema: SchemaNode,
  raw: Record<string, unknown>,
  env: Readonly<Record<string, string | undefined>>,
  sources: Map<string, string>,
  envKeys: string[],
  problems: ConfigProblem[],
  wholes: Set<string>,
): void {
  const names = Object.keys(env)
    .filter((name) => name.startsWith(ENV_PREFIX) && name.includes("__"))
    .sort();
  for (const name of names) {
    const text = env[name];
    if (text === undefined) continue;
    const segments = name.slice(ENV_PREFIX.length).split("__").map(snakeToCamel);
    let node: SchemaNode | undefined = schema;
    let target: Record<string, unknown> = raw;
    const walked: string[] = [];
    for (const [i, segment] of segments.entries()) {
      const parent: SchemaNode = node;
      node = childOf(parent, segment);
      if (node === undefined) {
        problems.push({
          path: dottedPath([...walked, segment]),
          expected: `expected one of the known keys (${knownKeys(parent).join(", ")})`,
          found: "an unknown key",
          source: `from ${name}`,
        });
        break;
      }
      walked.push(segment);
      if (i === segments.length - 1) {
        const value = coerce(node, text);
        target[segment] = value;
        sources.set(dottedPath(walked), `from ${name}`);
        // A whole section or record from one variable replaces what was there; its own leaves come from it,
        // the defaults filled in beside them do not.
        if (isObject(value)) {
          wholes.add(dottedPath(walked));
          for (const leaf of leaves(value, walked)) sources.set(dottedPath(leaf.segments), `from ${name}`);
        }
        envKeys.push(name);
      } else {
        const next = target[segment];
        if (next === null || typeof next !== "object" || Array.isArray(next)) target[segment] = {};
        target = target[segment] as Record<string, unknown>;
      }
    }
  }
}

function describeIssue(
  schema: SchemaNode,
  issue: z.core.$ZodIssue,
  raw: Record<string, unknown>,
  sources: Map<string, string>,
  file: string | undefined,
): ConfigProblem[] {
  const base = issue.path.map(String);
  const sourceOf = (path: string[]) => sourceFor(dottedPath(path), sources, file);
  if (issue.code === "unrecognized_keys") {
    let parentNode: SchemaNode | undefined = schema;
    for (const seg of base) parentNode = parentNode ? childOf(parentNode, seg) : undefined;
    const known = parentNode ? knownKeys(parentNode).join(", ") : "";
    return issue.keys.map((key) => {
      const path = [...base, key];
      return {
        path: dottedPath(path),
        expected: `expected one of the known keys (${known})`,
        found: `an unknown key with value ${render(valueAt(raw, path))}`,
        source: sourceOf(path),
      };
    });
  }
  // The value at the problem's path: a rule over a whole section reports at one key, never the section.
  const found = render(valueAt(raw, base), base);
  return [
    { path: base.length ? dottedPath(base) : "(root)", expected: expectation(issue), found, source: sourceOf(base) },
  ];
}

/** Where a key's value came from: the environment variable or override that set it, or the file. */
function sourceFor(path: string, sources: Map<string, string>, file: string | undefined): string | undefined {
  // A whole section can be wrong (a misspelt section name): its keys' source is the section's.
  const within = () => [...sources].find(([key]) => key.startsWith(`${path}.`))?.[1];
  return sources.get(path) ?? within() ?? (file ? `in ${file}` : undefined);
}

function sanitizeHostname(hostname: string): string {
  const cleaned = hostname
    .replace(/[^A-Za-z0-9._-]/g, "-")
    .replace(/^[^A-Za-z0-9]+/, "")
    .slice(0, 64);
  return cleaned.length > 0 ? cleaned : "outpost-device";
}

/**
 * Reads the password file and checks that TLS files can be read, so a typo fails now and not at connect.
 * Takes the section as written (it may not have validated): a value that is not a string is the schema's
 * problem. Returns the password read from `passwordFile`.
 */
function resolveFiles(
  mqtt: Record<string, unknown>,
  problems: ConfigProblem[],
  sources: Map<string, string>,
  file: string | undefined,
): string | undefined {
  const source = (key: string) => sourceFor(`mqtt.${key}`, sources, file);
  let password: string | undefined;
  // Both forms at once is the schema's problem to report; reading the file would only add noise.
  if (typeof mqtt.passwordFile === "string" && mqtt.password === undefined) {
    try {
      password = readPasswordFile(mqtt.passwordFile);
    } catch (err) {
      problems.push({
        path: "mqtt.passwordFile",
        expected: "expected a readable file holding the MQTT password",
        found: `${(err as NodeJS.ErrnoException).code ?? "an error"} for ${mqtt.passwordFile}`,
        source: source("passwordFile"),
      });
    }
  }
  for (const key of ["ca", "cert", "key"] as const) {
    const path = mqtt[key];
    // An empty path is a blank variable or template, not "no CA": reported like any unreadable file.
    if (typeof path !== "string") continue;
    try {
      accessSync(path, constants.R_OK);
    } catch (err) {
      problems.push({
        path: `mqtt.${key}`,
        expected: "expected a readable PEM file",
        found: `${(err as NodeJS.ErrnoException).code ?? "an error"} for ${path}`,
        source: source(key),
      });
    }
  }
  return password;
}

/**
 * Files a task reads when it runs (its model, its golden image) that cannot be read now: warnings, since a
 * model may arrive later (an update) and validating as another user than the service's is normal. Takes the
 * configuration as written (it may not have validated): only string paths are looked at.
 */
export function unreadableTaskFiles(raw: unknown): string[] {
  const warnings: string[] = [];
  const define = isObject(raw) && isObject(raw.tasks) ? raw.tasks.define : undefined;
  if (!isObject(define)) return warnings;
  for (const [name, def] of Object.entries(define)) {
    if (!isObject(def)) continue;
    const golden = isObject(def.golden) ? def.golden.image : undefined;
    for (const [key, path] of [
      [["model"], def.model],
      [["golden", "image"], golden],
    ] as const) {
      if (typeof path !== "string") continue;
      try {
        accessSync(path, constants.R_OK);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? "an error";
        warnings.push(`${dottedPath(["tasks", "define", name, ...key])}: cannot read ${path} (${code})`);
      }
    }
  }
  return warnings;
}
