import { readFileSync, statSync } from "node:fs";
import { parse, stringify } from "yaml";
import {
  type ConfigProblem,
  dottedPath,
  formatProblems,
  type LoadedConfig,
  leaves,
  MAX_CONFIG_BYTES,
  originOf,
  redact,
  unknownEnvVars,
  unreadableTaskFiles,
} from "../config/load.ts";
import { stateDirProblem } from "../config/state-dir.ts";
import type { ConfigStore } from "../config/store.ts";
import { isOutpostError } from "../core/errors.ts";
import { type Config, configJsonSchema, loadAgentConfig, openConfigStore } from "../schema.ts";
import { EXIT, type Host, UsageError } from "./host.ts";

export const DEFAULT_CONFIG = "/etc/outpost/config.yaml";

/**
 * Loads the configuration for a command, or prints every problem (one line each) and returns the
 * EX_CONFIG exit code. An explicit path must exist; the default path may be absent.
 */
export function loadOrReport(host: Host, path: string | undefined): LoadedConfig | number {
  return reportProblems(host, () => loadAgentConfig(sourcesOf(host, path)));
}

/** The agent's live configuration (file, remote overrides, environment), or the EX_CONFIG exit code. */
export function openConfig(host: Host, path: string | undefined): ConfigStore | number {
  return reportProblems(host, () => openConfigStore(sourcesOf(host, path)));
}

/** Where a command's configuration comes from: the path given (which must exist) or the default, and the environment. */
function sourcesOf(host: Host, path: string | undefined) {
  return { path: path ?? DEFAULT_CONFIG, required: path !== undefined, env: host.env, hostname: host.hostname };
}

function reportProblems<T>(host: Host, load: () => T): T | number {
  for (const name of unknownEnvVars(host.env)) {
    host.stderr.write(
      `outpost: warning: ${name} names no config key and is ignored (nesting takes a double underscore)\n`,
    );
  }
  try {
    return load();
  } catch (err) {
    if (isOutpostError(err, "CONFIG_INVALID")) {
      host.stderr.write(`outpost: invalid configuration\n`);
      for (const line of formatProblems(err.details as ConfigProblem[])) host.stderr.write(`  ${line}\n`);
      return EXIT.CONFIG;
    }
    throw err;
  }
}

/** A config file as written, or nothing when it cannot be read or parsed (its problems are reported anyway). */
function rawFile(path: string): unknown {
  try {
    if (statSync(path).size > MAX_CONFIG_BYTES) return undefined;
    return parse(readFileSync(path, "utf8"));
  } catch {
    return undefined;
  }
}

/**
 * The configuration as a file that validates again to the same hash: secrets redacted, and the password read
 * from `mqtt.passwordFile` left out (the file names it; printing both would not validate).
 */
function printable(config: Config): Config {
  const out = redact(config);
  if (out.mqtt.passwordFile === undefined) return out;
  const { password: _read, ...mqtt } = out.mqtt;
  return { ...out, mqtt };
}

export function configCommand(host: Host, args: string[]): number {
  const [sub, ...all] = args;
  const sources = sub === "print" && all.includes("--sources");
  const rest = all.filter((a) => !(sub === "print" && a === "--sources"));
  if (rest.length > 1) throw new UsageError(`config ${sub ?? ""}: too many arguments`);
  switch (sub) {
    case "validate": {
      const path = rest[0];
      if (path === undefined) throw new UsageError("config validate: missing PATH");
      const loaded = loadOrReport(host, path);
      if (typeof loaded === "number") {
        // One pass: the task files are named too, from the file as written, while the schema's problems stand.
        for (const line of unreadableTaskFiles(rawFile(path))) host.stderr.write(`outpost: warning: ${line}\n`);
        return loaded;
      }
      // Only a warning: validating as a normal user a file meant for the service user is fine.
      const stateProblem = stateDirProblem(loaded.config.state.dir, { create: false });
      if (stateProblem) host.stderr.write(`outpost: warning: ${stateProblem}\n`);
      for (const line of unreadableTaskFiles(loaded.config)) host.stderr.write(`outpost: warning: ${line}\n`);
      host.stdout.write(`${path}: valid (device ${loaded.config.device.id}, hash ${loaded.hash.slice(0, 12)})\n`);
      return EXIT.OK;
    }
    case "schema":
      if (rest.length > 0) throw new UsageError("config schema: takes no arguments");
      host.stdout.write(`${JSON.stringify(configJsonSchema(), null, 2)}\n`);
      return EXIT.OK;
    case "print": {
      // What the agent would use: the file, the overrides config.set stored in state.dir, the environment.
      const configStore = openConfig(host, rest[0]);
      if (typeof configStore === "number") return configStore;
      const config = printable(configStore.current().config);
      if (!sources) {
        host.stdout.write(stringify(config));
        return EXIT.OK;
      }
      const origins = configStore.origins();
      for (const { segments, value } of leaves(config)) {
        const origin = originOf(origins, segments) ?? "default";
        host.stdout.write(`${dottedPath(segments)} = ${JSON.stringify(value)}  # ${origin}\n`);
      }
      return EXIT.OK;
    }
    default:
      throw new UsageError(sub === undefined ? "config: missing subcommand" : `config: unknown subcommand ${sub}`);
  }
}
