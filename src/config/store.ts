import { EventEmitter } from "node:events";
import { readFileSync } from "node:fs";
import { watch } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { sleep } from "../core/clock.ts";
import type { Code } from "../core/codes.ts";
import { isOutpostError, OutpostError } from "../core/errors.ts";
import { writeFileAtomically } from "../core/files.ts";
import type { Logger } from "../core/logger.ts";
import { isObject } from "../core/merge.ts";
import type { Config } from "../schema.ts";
import {
  type ConfigProblem,
  dottedPath,
  formatProblems,
  type LoadedConfig,
  type LoadOptions,
  leafPaths,
  leaves,
  loadConfig,
  mergePatch,
  originOf,
} from "./load.ts";
import { diffPaths, pathPatch, withoutEmpty } from "./paths.ts";
import { TRUST_KEYS } from "./schema.ts";

export { diffPaths };

import type { Typed } from "./schema-walk.ts";

/** One immutable, validated configuration. A new version replaces it whole; nothing is ever half-applied. */
export interface Snapshot {
  readonly version: number;
  /** The file's form (durations and sizes as written): what `config print`, `config.get`, diffs and the hash use. */
  readonly config: Config;
  /** The same values as modules read them: durations in milliseconds, sizes in bytes (parsed once, here). */
  readonly typed: TypedConfig;
  readonly hash: string;
  /**
   * Where each value came from, by dottedPath (absent: the default; a leaf under a recorded path has that
   * path's origin, see originOf): built with the snapshot, so that it always describes the values in use.
   */
  readonly origins: ReadonlyMap<string, string>;
}

export type TypedConfig = Typed<Config>;

/** A key a `config.set` named that the environment sets: the change is stored, but the variable's value is used. */
export interface Shadowed {
  path: string;
  by: string;
}

export type ApplyResult =
  | { ok: true; snapshot: Snapshot; changed: string[]; restartRequired: string[]; shadowed: Shadowed[] }
  | { ok: false; code: Code; problems: ConfigProblem[] };

/** A refusal of a remote change beyond validation: who may make it, or what it would leave behind. */
export interface PatchRefusal {
  code: Code;
  problems: ConfigProblem[];
}

export interface PatchOptions {
  reason?: string;
  /** The change comes from a key allowed to change TRUST_KEYS. */
  trust?: boolean;
  /** Checks a configuration whose trust keys changed (for example: some key can still run config.set). */
  guard?: (next: Config) => PatchRefusal | undefined;
}

export const OVERRIDES_FILE = "config-overrides.json";

export interface StoreOptions extends Omit<LoadOptions, "overrides" | "patch"> {
  logger?: Logger;
}

const under = (path: string, keys: readonly string[]) => keys.some((k) => path === k || path.startsWith(`${k}.`));

/** The overrides file: `{"format": 2, "values": {...}}`. A plain object is the format before trust keys. */
const OVERRIDES_FORMAT = 2;

/**
 * The agent's configuration: the file, then the remote overrides of `config.set` (kept in
 * `state.dir/config-overrides.json`), then the environment. `reload()` and `patch()` are synchronous from
 * reading to swapping, so two of them (a SIGHUP during a `config.set`) can never interleave. Events: `change`
 * after a new snapshot is in; `reload` around a reload of the file ("start", then "end", whatever the outcome).
 */
export class ConfigStore extends EventEmitter<{
  change: [next: Snapshot, previous: Snapshot];
  reload: [phase: "start" | "end"];
}> {
  /** The configuration the process started with: what restart-only keys are still using. */
  readonly booted: Snapshot;
  /** Set when the stored overrides no longer validate: they are ignored until fixed or replaced. */
  readonly overrideProblems: ConfigProblem[] = [];
  /**
   * Stored overrides of keys that may not (or, before trust keys existed, could wrongly) be set remotely,
   * dropped at start: a device that was tampered with must not stay tampered. The agent reports them.
   */
  readonly droppedOverrides: string[] = [];
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
    if (stored !== undefined && this.droppedOverrides.length > 0) {
      try {
        this.store(stored);
      } catch {
        // Dropped from memory all the same; the next config.set writes the file again.
      }
    }
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
    this.snapshot = this.snapshotOf(1, loaded);
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
    return diffPaths(this.booted.config, this.snapshot.config).filter((p) => under(p, this.options.model.restartKeys));
  }

  /** Reads the file, overrides and environment again; keeps the current snapshot if anything is invalid. */
  reload(reason: string): ApplyResult {
    this.emit("reload", "start");
    try {
      let loaded: LoadedConfig;
      try {
        loaded = this.load(this.overrides);
      } catch (err) {
        return this.refused(err, reason);
      }
      return this.swap(loaded, reason);
    } finally {
      this.emit("reload", "end");
    }
  }

  /** Applies a JSON merge patch from `config.set`; stores it only when the whole result is valid and allowed. */
  patch(patch: Record<string, unknown>, options: PatchOptions = {}): ApplyResult {
    const reason = options.reason ?? "config.set";
    const local = leafPaths(patch).filter((p) => under(p, this.options.model.localOnlyKeys));
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
      loaded = this.load(next, { values: patch, source: reason });
    } catch (err) {
      // The sender's mistake, not the device's: a warning.
      return this.refused(err, reason, "warn");
    }
    // Judged on the effective change, so that removing a section (`null`) counts like setting its keys.
    const changed = diffPaths(this.snapshot.config, loaded.config);
    const trustChanged = changed.filter((p) => under(p, TRUST_KEYS));
    if (trustChanged.length > 0 && options.trust !== true) {
      const problems = trustChanged.map((path) => ({
        path,
        expected: 'expected a change by a key whose allow list names "trust.*"',
        found: "a key without it",
      }));
      return this.rejected({ code: "KEY_NOT_ALLOWED", problems }, reason);
    }
    const refusal = trustChanged.length > 0 ? options.guard?.(loaded.config) : undefined;
    if (refusal) return this.rejected(refusal, reason);
    try {
      this.store(next);
    } catch (err) {
      this.log?.error({ err, reason }, "could not store the config change; nothing applied");
      return {
        ok: false,
        code: "CONFIG_NOT_STORED",
        problems: [{ path: "(overrides)", expected: `a writable ${this.overridesPath}`, found: String(err) }],
      };
    }
    this.overrides = next;
    // The environment wins over config.set: a change it shadows is kept for when the variable goes, and said.
    const shadowed = leaves(patch).flatMap(({ segments, value }): Shadowed[] => {
      const path = dottedPath(segments);
      if (value === null) {
        // A removal: every key under it that a variable sets stays.
        return [...loaded.origins]
          .filter(([key, origin]) => (key === path || key.startsWith(`${path}.`)) && origin.startsWith("from "))
          .map(([key, origin]) => ({ path: key, by: origin.slice(5) }));
      }
      const origin = originOf(loaded.origins, segments);
      return origin?.startsWith("from ") ? [{ path, by: origin.slice(5) }] : [];
    });
    if (shadowed.length > 0) {
      this.log?.warn({ reason, shadowed }, "config.set names keys the environment sets: the environment's values stay");
    }
    return this.swap(loaded, reason, changed, shadowed);
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

  /** Frozen as it is loaded: what a patch is checked against becomes the snapshot, and its leaves are walked once. */
  private load(overrides: Record<string, unknown>, patch?: LoadOptions["patch"]): LoadedConfig {
    const keys = Object.keys(overrides);
    const loaded = loadConfig({
      ...this.options,
      ...(keys.length > 0 ? { overrides: { values: overrides, source: this.overridesPath } } : {}),
      ...(patch ? { patch } : {}),
    });
    freeze(loaded.config);
    return loaded;
  }

  /**
   * Where each value of the configuration in use came from, by dottedPath (absent: the default; a leaf under
   * a recorded path has that path's origin, see originOf).
   */
  origins(): ReadonlyMap<string, string> {
    return this.snapshot.origins;
  }

  /**
   * `changed`: the paths that differ from the current snapshot, when the caller has already computed them;
   * `shadowed`: the keys of a `config.set` the environment sets.
   */
  private swap(
    loaded: LoadedConfig,
    reason: string,
    changed = diffPaths(this.snapshot.config, loaded.config),
    shadowed: Shadowed[] = [],
  ): ApplyResult {
    const previous = this.snapshot;
    if (changed.length === 0) {
      // The same values from elsewhere (a key moved from the file to a variable): the same version, new origins.
      if (!sameEntries(previous.origins, loaded.origins))
        this.snapshot = Object.freeze({ ...previous, origins: loaded.origins });
      return { ok: true, snapshot: this.snapshot, changed, restartRequired: this.restartRequired(), shadowed };
    }
    this.snapshot = this.snapshotOf(previous.version + 1, loaded);
    const restartRequired = this.restartRequired();
    this.log?.info({ reason, version: this.snapshot.version, changed, restartRequired }, "configuration applied");
    this.emit("change", this.snapshot, previous);
    return { ok: true, snapshot: this.snapshot, changed, restartRequired, shadowed };
  }

  private snapshotOf(version: number, loaded: LoadedConfig): Snapshot {
    const config = freeze(loaded.config);
    return Object.freeze({ version, config, typed: loaded.typed, hash: loaded.hash, origins: loaded.origins });
  }

  private rejected(refusal: PatchRefusal, reason: string): ApplyResult {
    this.log?.warn(
      { reason, version: this.snapshot.version, code: refusal.code, problems: formatProblems(refusal.problems) },
      "configuration change refused; keeping the current one",
    );
    return { ok: false, ...refusal };
  }

  private store(values: Record<string, unknown>): void {
    writeFileAtomically(this.overridesPath, `${JSON.stringify({ format: OVERRIDES_FORMAT, values }, null, 2)}\n`);
  }

  private refused(err: unknown, reason: string, level: "error" | "warn" = "error"): ApplyResult {
    if (!isOutpostError(err, "CONFIG_INVALID")) throw err;
    const problems = err.details as ConfigProblem[];
    this.log?.[level](
      { reason, version: this.snapshot.version, problems: formatProblems(problems) },
      "configuration change refused; keeping the current one",
    );
    return { ok: false, code: "CONFIG_INVALID", problems };
  }

  /** The overrides without the given keys; what was removed goes to droppedOverrides. */
  private without(values: Record<string, unknown>, keys: readonly string[]): Record<string, unknown> {
    let kept = values;
    for (const path of leafPaths(values)) {
      const key = keys.find((k) => path === k || path.startsWith(`${k}.`));
      if (key === undefined || this.droppedOverrides.includes(key)) continue;
      this.droppedOverrides.push(key);
      kept = mergePatch(kept, pathPatch(key)) as Record<string, unknown>;
    }
    return withoutEmpty(kept);
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
      if (isObject(value)) {
        const current = value.format === OVERRIDES_FORMAT && isObject(value.values);
        const values = current ? (value.values as Record<string, unknown>) : value;
        // Local-only keys never belong here; before format 2 any config.* key could also set the trust keys.
        const localOnly = this.options.model.localOnlyKeys;
        const forbidden = current ? localOnly : [...localOnly, ...TRUST_KEYS];
        return this.without(values, forbidden);
      }
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

function freeze<T>(value: T): T {
  if (value !== null && typeof value === "object" && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) freeze(child);
  }
  return value;
}

function sameEntries(a: ReadonlyMap<string, string>, b: ReadonlyMap<string, string>): boolean {
  return a.size === b.size && [...a].every(([k, v]) => b.get(k) === v);
}
