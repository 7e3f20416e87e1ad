import { copyFileSync, mkdirSync, readdirSync, readlinkSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";
import { fsyncPath, replaceLink } from "../core/files.ts";
import { releaseName } from "../version.ts";

/**
 * Models delivered by updates, per task: `<state.dir>/models/<task>/<version>-<sha12>.onnx`, with `current`
 * (the one the task runs) and `previous` as links switched by rename. A task with no `current` runs the model
 * its configuration names. A file is written, fsynced and renamed before any link names it, so a power cut
 * leaves the task on its old model or its new one.
 */
export class ModelStore {
  private readonly root: string;
  /** What each task runs now, when it is a delivered model. */
  private readonly active = new Map<string, string>();

  constructor(stateDir: string, tasks: readonly string[]) {
    this.root = join(stateDir, "models");
    for (const task of tasks) {
      const name = readLink(join(this.dir(task), "current"));
      if (name) this.active.set(task, join(this.dir(task), name));
    }
  }

  private dir(task: string): string {
    return join(this.root, task);
  }

  /** The delivered model a task runs, if any. */
  path(task: string): string | undefined {
    return this.active.get(task);
  }

  /** The version a delivered model's file name carries. */
  version(task: string): string | undefined {
    const path = this.active.get(task);
    return path
      ?.split("/")
      .pop()
      ?.replace(/-[0-9a-f]{12}\.onnx$/, "");
  }

  /** Copies the file in beside the others, durably; the task does not run it until `keep`. */
  place(task: string, file: string, release: { version: string; sha256: string }): { name: string; path: string } {
    const dir = this.dir(task);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const name = `${releaseName(release.version, release.sha256)}.onnx`;
    const path = join(dir, name);
    copyFileSync(file, `${path}.tmp`);
    fsyncPath(`${path}.tmp`);
    renameSync(`${path}.tmp`, path);
    fsyncPath(dir);
    return { name, path };
  }

  /** Makes the task run the placed model: `previous` names the one before (if delivered), `current` the new. */
  keep(task: string, placed: { name: string; path: string }): void {
    const dir = this.dir(task);
    const previous = this.active.get(task)?.split("/").pop();
    if (previous && previous !== placed.name) replaceLink(join(dir, "previous"), previous);
    replaceLink(join(dir, "current"), placed.name);
    fsyncPath(dir);
    this.active.set(task, placed.path);
    const keep = new Set([placed.name, previous, "current", "previous"]);
    for (const entry of readdirSync(dir)) if (!keep.has(entry)) rmSync(join(dir, entry), { force: true });
  }

  /** Removes a placed model that was not kept (unless it is the one the task runs: the same release again). */
  discard(task: string, placed: { name: string; path: string }): void {
    if (this.active.get(task) !== placed.path) rmSync(placed.path, { force: true });
  }
}

function readLink(path: string): string | undefined {
  try {
    return readlinkSync(path);
  } catch {
    return undefined;
  }
}
