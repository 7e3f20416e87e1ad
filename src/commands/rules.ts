import type { z } from "zod";
import { expectation } from "../config/problems.ts";
import type { Code } from "../core/codes.ts";
import { OutpostError } from "../core/errors.ts";
import { PROTOTYPE_KEYS } from "../core/merge.ts";
import { replyNamespace } from "../mqtt/topics.ts";
import type { CommandDefinition, CommandSpec } from "./types.ts";

/** Codes of the refusals; each one is answered with `failed` and nothing runs. */
export const REJECTIONS = [
  "BAD_REQUEST",
  "COMMAND_UNSIGNED",
  "KEY_UNKNOWN",
  "SIGNATURE_INVALID",
  "WRONG_DEVICE",
  "COMMAND_EXPIRED",
  "COMMAND_NOT_YET_VALID",
  "KEY_NOT_ALLOWED",
  "NONCE_REPLAYED",
  "REQUEST_REPLAYED",
  "UNKNOWN_COMMAND",
  "BAD_PARAMS",
  "BUSY",
  "REQUEST_TOO_LARGE",
  "REPLAY_STORE_UNAVAILABLE",
] as const satisfies readonly Code[];
export type Rejection = (typeof REJECTIONS)[number];

/** The request size every command accepts; one that takes more (task inputs, update chunks) says so. */
export const DEFAULT_MAX_REQUEST = 64 * 1024;

/** A request refused before it ran: one of the REJECTIONS, carried by the one error class like every wire code. */
export class Refused extends OutpostError {
  declare readonly code: Rejection;
  readonly id: string | undefined;
  /** Whether the request was authenticated (a valid signature, or unsigned while that is allowed). */
  authenticated = false;
  constructor(code: Rejection, message: string, id?: string) {
    super(code, message);
    this.name = "Refused";
    this.id = id;
  }
}

/** The path of the first key in a JSON value that names a prototype, if any. */
export function prototypeKey(value: unknown, path: string): string | undefined {
  if (value === null || typeof value !== "object") return undefined;
  for (const [key, child] of Object.entries(value)) {
    const at = `${path}.${key}`;
    if (!Array.isArray(value) && PROTOTYPE_KEYS.has(key)) return at;
    const found = prototypeKey(child, at);
    if (found) return found;
  }
  return undefined;
}

/** The response topic if it lies under the device's own `P/D/reply/` (and names no wildcard). */
export function ownResponseTopic(topic: string | undefined, prefix: string, device: string): string | undefined {
  const own = replyNamespace(prefix, device);
  if (topic === undefined || !topic.startsWith(own) || topic.length === own.length) return undefined;
  return topic.includes("+") || topic.includes("#") || topic.includes("\0") ? undefined : topic;
}

/**
 * Whether an allow list grants changing who is trusted (`commands.trustedKeys`): only `trust.*` or
 * `trust.commands` named explicitly; `*` does not imply it.
 */
export function grantsTrust(patterns: readonly string[]): boolean {
  return patterns.includes("trust.*") || patterns.includes("trust.commands");
}

/**
 * Commands no wildcard grants (neither `*` nor `debug.*`): a key's allow list must name them. A heap snapshot
 * holds whatever the agent's memory holds.
 */
export const EXPLICIT_ONLY: ReadonlySet<string> = new Set(["debug.heap-snapshot"]);

/** `*` allows everything, `config.*` a family, anything else one command; EXPLICIT_ONLY only by name. */
export function allows(patterns: readonly string[], command: string): boolean {
  if (EXPLICIT_ONLY.has(command)) return patterns.includes(command);
  return patterns.some((p) => p === "*" || p === command || (p.endsWith(".*") && command.startsWith(p.slice(0, -1))));
}

/**
 * The first problem of a zod error as `path: expected ...`, the path naming the key, in the words the config's
 * problems use (never zod's raw "Invalid input"). A missing value (parsed with `reportInput`) says "found
 * nothing"; other values are not echoed (a request may carry secrets).
 */
export function describe(error: z.ZodError, root?: string): string {
  const issue = error.issues[0];
  const path = [...(root ? [root] : []), ...(issue?.path.map(String) ?? [])].join(".") || "(request)";
  if (!issue) return `${path}: invalid`;
  if (issue.code === "unrecognized_keys") {
    return `${path}: unknown ${issue.keys.length > 1 ? "keys" : "key"} ${issue.keys.map((k) => JSON.stringify(k)).join(", ")}`;
  }
  const missing = issue.code === "invalid_type" && "input" in issue && issue.input === undefined;
  // zod's own words for the rest start "Invalid ...": said as what is expected instead.
  const expected = expectation(issue).replace(/^expected invalid\s+/i, "expected a valid ");
  return `${path}: ${expected}${missing ? ", found nothing" : ""}`;
}

/** A command: its params' schema and its run, typed together (see CommandDefinition). */
export function defineCommand<S extends z.ZodType>(spec: CommandSpec<S>): CommandDefinition {
  const { params, run, ...rest } = spec;
  return {
    ...rest,
    bind: (raw) => {
      const checked = checkParams(params, raw);
      return checked.ok ? { ok: true, run: (context) => run(checked.value, context) } : checked;
    },
  };
}

/** A command's params checked against its schema: the parsed value, or the BAD_PARAMS message. */
export function checkParams<S extends z.ZodType>(
  schema: S,
  params: unknown,
): { ok: true; value: z.output<S> } | { ok: false; message: string } {
  const checked = schema.safeParse(params, { reportInput: true });
  return checked.success
    ? { ok: true, value: checked.data }
    : { ok: false, message: describe(checked.error, "params") };
}
