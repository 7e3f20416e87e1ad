import { accessSync, constants, existsSync, mkdirSync } from "node:fs";
import { userInfo } from "node:os";
import { dirname } from "node:path";

/**
 * Why state.dir cannot be used by this process (created if missing, then written), or undefined when it can.
 * One line that says what to do: the default /var/lib/outpost belongs to the service user.
 */
export function stateDirProblem(dir: string, options: { create: boolean }): string | undefined {
  try {
    if (options.create) mkdirSync(dir, { recursive: true });
    // Without creating anything: the directory, or the nearest parent that exists, must be writable.
    let existing = dir;
    while (!existsSync(existing) && dirname(existing) !== existing) existing = dirname(existing);
    accessSync(existing, constants.W_OK | constants.X_OK);
    if (existing !== dir) assertDirectory(existing);
    return undefined;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "an error";
    let user = "this user";
    try {
      user = `user ${userInfo().username}`;
    } catch {
      // no passwd entry: keep the generic wording
    }
    return `state.dir ${dir} cannot be created or written by ${user} (${code}): set state.dir in a file given with --config, or OUTPOST_STATE__DIR, or run as the service user (sudo -u outpost)`;
  }
}

/** Throws ENOTDIR unless `path` is a directory (a parent that exists must be one to hold state.dir). */
function assertDirectory(parent: string): void {
  accessSync(`${parent}/.`, constants.F_OK);
}
