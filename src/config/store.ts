import { EventEmitter } from "node:events";
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { watch } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { sleep } from "../core/clock.ts";
import { isOutpostError, OutpostError } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";
import {
  type ConfigProblem,
  formatProblems,
  type LoadedConfig,
  type LoadOptions,
  leafPaths,
  loadConfig,
  mergePatch,
  redact,
} from "./load.ts";
import type { Config } from "./schema.ts";

/** One immutable, validated configuration. A new version replaces it whole; nothing is ever half-applied. */
export interface Snapshot {
  readonly version: number;
  readonly config: Config;
  readonly hash: string;
}

export type ApplyResult =
  | { ok: true; snapshot: Snapshot; changed: string[]; restartRequired: string[] }
  | { ok: false; code: string; problems: ConfigProblem[] };

/** Keys that components read once at start: a new value is stored, and used after the next restart. */
export const RESTART_KEYS = ["device", "mqtt", "outbox", "state", "log.format"];
/**
 * Keys `config.set` may not change: a typo there would leave the device unreachable (mqtt) or lose its
 * state (state.dir, device.id) with nobody on site to fix it. They change in the file on the device.
 */
export const LOCAL_ONLY_KEYS = ["device", "mqtt", "state"];

export const OVERRIDES_FILE = "config-overrides.json";

export interface StoreOptions extends Omit<LoadOptions, "overrides"> {
  logger?: Logger;
}

const under = (path: string, keys: readonly string[]) => keys.some((k) => path === k || path.startsWith(`${k}.`));

/**
 * The agent's configuration: the file, then the remote overrides of `config.set` (kept in
 * `state.dir/config-overrides.json`), then the environment. `reload()` and `patch()` are synchronous from
 * reading to swapping, so two of them (a SIGHUP during a `config.set`) can never interleave.
 */
export class ConfigStore extends EventEmitter<{ change: [next: Snapshot, previous: Snapshot] }> {
  /** The configuration the process started with: what restart-only keys are still using. */
  readonly booted: Snapshot;
  /** Set when the stored overrides no longer validate: they are ignored until fixed or replaced. */
  readonly overrideProblems: ConfigProblem[] = [];
  private snapshot: Snapshot;
  private overrides: Record<string, unknown> = {};
  private readonly overridesPath: string;
  private readonly options: StoreOptions;
  private log: Logger | undefined;

  /** Loads the configuration; throws CONFIG_INVALID when the file or environment is invalid. */
  constructor(options: StoreOptions) {
    super();
    this.options = options;
    this.log = options.logger;
    const base = loadConfig(options);
    this.overridesPath = join(base.config.state.dir, OVERRIDES_FILE);
    let loaded: LoadedConfig = base;
    const stored = this.readOverrides();
    if (stored !== undefined) {
      try {
        loaded = this.load(stored);
        this.overrides = stored;
      } catch (err) {
        // Stored overrides that no longer fit (a newer file, an older binary) must not keep the agent down.
        if (!isOutpostError(err, "CONFIG_INVALID")) throw err;
        this.overrideProblems.push(...(err.details as ConfigProblem[]));
      }
    }
    this.snapshot = freeze({ version: 1, config: loaded.config, hash: loaded.hash });
    this.booted = this.snapshot;
  }

  /** The logger exists only once the config is loaded: it takes its level from it. */
  useLogger(logger: Logger): void {
    this.log = logger;
  }

  current(): Snapshot {
    return this.snapshot;
  }

  /** Keys whose current value differs from the one the process started with and needs a restart. */
  restartRequired(): string[] {
    return diffPaths(this.booted.config, this.snapshot.config).filter((p) => under(p, RESTART_KEYS));
  }

  /** Reads the file, overrides and environment again; keeps the current snapshot if anything is invalid. */
  reload(reason: string): ApplyResult {
    let loaded: LoadedConfig;
    try {
      loaded = this.load(this.overrides);
    } catch (err) {
      return this.refused(err, reason);
    }
    return this.swap(loaded, reason);
  }

  /** Applies a JSON merge patch from `config.set`; stores it only when the whole result is valid. */
  patch(patch: Record<string, unknown>, reason = "config.set"): ApplyResult {
    const local = leafPaths(patch).filter((p) => under(p, LOCAL_ONLY_KEYS));
    if (local.length > 0) {
      const problems = local.map((path) => ({
        path,
        expected: "expected a key that may be set remotely (device, mqtt and state change only in the file)",
        found: "a remote change",
      }));
      return this.refused(invalid(problems), reason);
    }
    const next = mergePatch(this.overrides, patch) as Record<string, unknown>;
    let loaded: LoadedConfig;
    try {
      loaded = this.load(next);
    } catch (err) {
      return this.refused(err, reason);
    }
    try {
      writeAtomically(this.overridesPath, `${JSON.stringify(next, null, 2)}\n`);
    } catch (err) {
      this.log?.error({ err, reason }, "could not store the config change; nothing applied");
      return {
        ok: false,
        code: "CONFIG_NOT_STORED",
        problems: [{ path: "(overrides)", expected: `a writable ${this.overridesPath}`, found: String(err) }],
      };
    }
    this.overrides = next;
    return this.swap(loaded, reason);
  }

  /**
   * Reloads when the config file changes. Watches the directory, since editors and config managers replace
   * the file by renaming; each change is read `settleMs` after its event. Runs until the signal aborts.
   */
  async watchFile(signal: AbortSignal, settleMs = 200): Promise<void> {
    const file = this.options.path;
    if (file === undefined) return;
    let events: AsyncIterable<{ filename: string | Buffer | null }>;
    try {
      events = watch(dirname(file), { signal });
    } catch (err) {
      this.log?.warn({ err, file }, "cannot watch the config file; reload with SIGHUP");
      return;
    }
    const name = basename(file);
    try {
      for await (const event of events) {
        if (event.filename !== null && String(event.filename) !== name) continue;
        // Let the writer finish; the events queued meanwhile reload again, which is a no-op when unchanged.
        await sleep(settleMs, signal);
        if (!signal.aborted) this.reload("file changed");
      }
    } catch (err) {
      if (signal.aborted) return;
      // No config directory (defaults and environment only): nothing to watch, and nothing wrong.
      const absent = (err as NodeJS.ErrnoException).code === "ENOENT";
      this.log?.[absent ? "debug" : "warn"]({ err, file }, "config file not watched; reload with SIGHUP");
    }
  }

  private load(overrides: Record<string, unknown>): LoadedConfig {
    const keys = Object.keys(overrides);
    return loadConfig({
      ...this.options,
      ...(keys.length > 0 ? { overrides: { values: overrides, source: this.overridesPath } } : {}),
    });
  }

  private swap(loaded: LoadedConfig, reason: string): ApplyResult {
    const previous = this.snapshot;
    const changed = diffPaths(previous.config, loaded.config);
    if (changed.length === 0) return { ok: true, snapshot: previous, changed, restartRequired: this.restartRequired() };
    this.snapshot = freeze({ version: previous.version + 1, config: loaded.config, hash: loaded.hash });
    this.log?.info(
      { reason, version: this.snapshot.version, changed, restartRequired: this.restartRequired() },
      "configuration applied",
    );
    const restartRequired = this.restartRequired();
    this.emit("change", this.snapshot, previous);
    return { ok: true, snapshot: this.snapshot, changed, restartRequired };
  }

  private refused(err: unknown, reason: string): ApplyResult {
    if (!isOutpostError(err, "CONFIG_INVALID")) throw err;
    const problems = err.details as ConfigProblem[];
    this.log?.error(
      { reason, version: this.snapshot.version, problems: formatProblems(problems) },
      "configuration change refused; keeping the current one",
    );
    return { ok: false, code: "CONFIG_INVALID", problems };
  }

  private readOverrides(): Record<string, unknown> | undefined {
    let text: string;
    try {
      text = readFileSync(this.overridesPath, "utf8");
    } catch {
      return undefined;
    }
    try {
      const value: unknown = JSON.parse(text);
      if (value !== null && typeof value === "object" && !Array.isArray(value)) return value as Record<string, unknown>;
    } catch {
      // Reported below like any other unusable override.
    }
    this.overrideProblems.push({
      path: "(overrides)",
      expected: "expected a JSON object",
      found: "unreadable content",
      source: `in ${this.overridesPath}`,
    });
    return undefined;
  }
}

function invalid(problems: ConfigProblem[]): OutpostError {
  return new OutpostError("CONFIG_INVALID", formatProblems(problems).join("\n"), { details: problems });
}

/** Dotted paths whose values differ (secrets compared redacted, arrays as whole values). */
export function diffPaths(a: Config, b: Config): string[] {
  const flat = (c: Config) => {
    const out = new Map<string, string>();
    const walk = (node: unknown, path: string) => {
      if (node !== null && typeof node === "object" && !Array.isArray(node)) {
        for (const [k, v] of Object.entries(node)) walk(v, path ? `${path}.${k}` : k);
      } else if (node !== undefined) {
        out.set(path, JSON.stringify(node));
      }
    };
    walk(redact(c), "");
    return out;
  };
  const fa = flat(a);
  const fb = flat(b);
  const keys = new Set([...fa.keys(), ...fb.keys()]);
  return [...keys].filter((k) => fa.get(k) !== fb.get(k)).sort();
}

function freeze<T>(value: T): T {
  if (value !== null && typeof value === "object" && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) freeze(child);
  }
  return value;
}

function writeAtomically(path: string, text: string): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.tmp`;
  writeFileSync(tmp, text, { mode: 0o600 });
  const fd = openSync(tmp, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
  const dir = openSync(dirname(path), "r");
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}
