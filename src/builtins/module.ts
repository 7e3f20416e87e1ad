import { z } from "zod";
import {
  allows,
  type Caller,
  type CommandDefinition,
  defineCommand,
  grantsTrust,
  type RunContext,
} from "../commands/commands.ts";
import { formatProblems } from "../config/problems.ts";
import { redact } from "../config/redact.ts";
import type { ConfigStore } from "../config/store.ts";
import { OutpostError } from "../core/errors.ts";
import { LOG_LEVELS } from "../core/logger.ts";
import type { Module } from "../kernel/module.ts";

// Optional and nullable wrap the object (no union), so a problem inside it is reported at its own path.
const noParams = z.strictObject({}).nullish();

/** The built-in commands: ping, describe, config.get, config.set, log.level, restart. */
export const builtinsModule: Module<undefined> = {
  name: "builtins",
  create(ctx) {
    const define = <S extends z.ZodType>(
      name: string,
      params: S,
      run: (params: z.output<S>, context: RunContext) => unknown,
      changesState = true,
    ): CommandDefinition => defineCommand({ name, params, changesState, run });
    const read = <S extends z.ZodType>(name: string, params: S, run: (params: z.output<S>) => unknown) =>
      define(name, params, run, false);

    return {
      commands: [
        read("ping", noParams, () => ({ pong: true })),
        read("describe", noParams, () => ctx.describe()),
        read("config.get", z.strictObject({ path: z.string().min(1).optional() }).nullish(), (params) => {
          const snapshot = ctx.configStore.current();
          const config = redact(snapshot.config);
          const path = params?.path;
          if (path === undefined) return { version: snapshot.version, hash: snapshot.hash, config };
          const value = path.split(".").reduce<unknown>((node, key) => {
            if (node === null || typeof node !== "object" || !Object.hasOwn(node, key)) {
              throw new OutpostError("CONFIG_KEY_UNKNOWN", `no config key ${path}`);
            }
            return (node as Record<string, unknown>)[key];
          }, config);
          return { version: snapshot.version, hash: snapshot.hash, path, value };
        }),
        define(
          "config.set",
          z.strictObject({
            patch: z.record(z.string(), z.unknown(), { message: "expected a JSON merge patch (an object)" }),
          }),
          (params, context) => configSet(ctx.configStore, params.patch, context.caller, context.id),
        ),
        define("log.level", z.strictObject({ level: z.enum(LOG_LEVELS) }), (params) => ctx.setLogLevel(params.level)),
        define(
          "restart",
          z.strictObject({ delay: z.number().int().min(0).max(600_000).optional() }).nullish(),
          (params, context) => {
            const delayMs = params?.delay ?? 500;
            ctx.logger.warn({ delayMs }, "restart requested by command");
            // The final reply comes from the next process, once it is up (the restart outcome).
            ctx.restart(delayMs, context.defer());
            context.progress({ restarting: true, inMs: delayMs });
            return undefined;
          },
        ),
      ],
    };
  },
};

/** Applies a config.set patch with the trust rules; a refusal becomes the command's error. */
function configSet(settings: ConfigStore, patch: Record<string, unknown>, caller: Caller | undefined, id: string) {
  const result = settings.patch(patch, {
    reason: `config.set request ${id} (${caller ? `key ${caller.key}` : "unsigned"})`,
    trust: caller !== undefined && grantsTrust(caller.allow),
    // A remote change must never lock the operators out for good: some key must keep config.set.
    guard: (next) =>
      next.commands.trustedKeys.some((k) => allows(k.allow, "config.set"))
        ? undefined
        : {
            code: "CONFIG_LOCKOUT",
            problems: [
              {
                path: "commands.trustedKeys",
                expected: "expected at least one key allowed to run config.set",
                found: "none left",
              },
            ],
          },
  });
  if (!result.ok) {
    // An invalid patch is a bad parameter of this command: name the path inside it.
    const invalid = result.code === "CONFIG_INVALID";
    const problems = formatProblems(
      result.problems.map((p) => (invalid ? { ...p, path: `params.patch.${p.path}` } : p)),
    );
    throw new OutpostError(invalid ? "BAD_PARAMS" : result.code, problems.join("; "), { details: problems });
  }
  const { snapshot, changed, restartRequired, shadowed } = result;
  return { ok: true, version: snapshot.version, hash: snapshot.hash, changed, restartRequired, shadowed };
}
