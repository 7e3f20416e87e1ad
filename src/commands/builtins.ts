import { z } from "zod";
import type { Code } from "../core/codes.ts";
import { OutpostError } from "../core/errors.ts";
import type { Caller, CommandDefinition } from "./commands.ts";

export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** The outcome of a config change, as the config store reports it. */
export type ConfigChange =
  | { ok: true; version: number; hash: string; changed: string[]; restartRequired: string[] }
  | { ok: false; code: Code; problems: string[] };

/** What the built-in commands need from the rest of the agent; the composition root provides it. */
export interface BuiltinHost {
  describe(): Record<string, unknown>;
  telemetryNow(): Promise<Record<string, unknown>>;
  configGet(): { version: number; hash: string; config: unknown };
  /** `caller`: the key that signed the request, which decides whether trust keys may change. */
  configSet(patch: Record<string, unknown>, caller: Caller | undefined): ConfigChange;
  setLogLevel(level: LogLevel): { previous: string; level: string };
  /** Asks the agent to stop cleanly and exit with the restart code, after `delayMs`. */
  restart(delayMs: number): void;
}

// Optional and nullable wrap the object (no union), so a problem inside it is reported at its own path.
const noParams = z.strictObject({}).nullish();

export function builtinCommands(host: BuiltinHost): CommandDefinition[] {
  const define = <S extends z.ZodType>(
    name: string,
    params: S,
    run: (params: z.output<S>, caller: Caller | undefined) => unknown,
    changesState = true,
  ): CommandDefinition => ({ name, params, changesState, run: (p, context) => run(p as z.output<S>, context.caller) });
  const read = <S extends z.ZodType>(name: string, params: S, run: (params: z.output<S>) => unknown) =>
    define(name, params, run, false);

  return [
    read("ping", noParams, () => ({ pong: true })),
    read("describe", noParams, () => host.describe()),
    read("telemetry.now", noParams, () => host.telemetryNow()),
    read("config.get", z.strictObject({ path: z.string().min(1).optional() }).nullish(), (params) => {
      const snapshot = host.configGet();
      const path = params?.path;
      if (path === undefined) return snapshot;
      const value = path.split(".").reduce<unknown>((node, key) => {
        if (node === null || typeof node !== "object" || !Object.hasOwn(node, key)) {
          throw new OutpostError("CONFIG_KEY_UNKNOWN", `no config key ${path}`);
        }
        return (node as Record<string, unknown>)[key];
      }, snapshot.config);
      return { version: snapshot.version, hash: snapshot.hash, path, value };
    }),
    define(
      "config.set",
      z.strictObject({
        patch: z.record(z.string(), z.unknown(), { message: "expected a JSON merge patch (an object)" }),
      }),
      (params, caller) => {
        const change = host.configSet(params.patch, caller);
        if (!change.ok) {
          throw new OutpostError(change.code, change.problems.join("; "), { details: change.problems });
        }
        return change;
      },
    ),
    define("log.level", z.strictObject({ level: z.enum(LOG_LEVELS) }), (params) => host.setLogLevel(params.level)),
    define(
      "restart",
      z.strictObject({ delay: z.number().int().min(0).max(600_000).optional() }).nullish(),
      (params) => {
        const delayMs = params?.delay ?? 500;
        host.restart(delayMs);
        return { restarting: true, inMs: delayMs };
      },
    ),
  ];
}
