import { readFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import * as sea from "node:sea";
import { releaseVersion, VERSION } from "../version.ts";

/**
 * The release this agent runs, as the update module sees it: an input, so that a fleet simulator (or a test)
 * can run the real module as any release in any layout.
 */
export interface RunningRelease {
  /** The version a release is compared with (downgrades, the same version twice). */
  version: string;
  /** Its release directory (`<version>-<sha12>`) in the installed layout; undefined elsewhere (dist/, a checkout). */
  release: string | undefined;
  /** The running binary, whose chunks a new release reuses; undefined when there is none (a checkout). */
  binary: string | undefined;
  /** Root's records of the installed layout (`/opt/outpost/update`); undefined outside it. */
  records: string | undefined;
  /** The revision of the update units beside the release (null: none installed). */
  unitsRevision(): number | null;
  /** Why nothing would install a staged release here; undefined when root's installer is there. */
  noInstaller(): string | undefined;
  arch: string;
}

/** This process: the single executable in its release directory, or a build or checkout run by hand. */
export function runningRelease(): RunningRelease {
  const binary = sea.isSea() ? process.execPath : undefined;
  const release = binary ? releaseDirOf(binary) : undefined;
  const opt = binary && release ? dirname(dirname(dirname(binary))) : undefined;
  const revision = () => unitsRevision(opt);
  return {
    version: VERSION,
    release,
    binary,
    records: opt ? join(opt, "update") : undefined,
    unitsRevision: revision,
    noInstaller: () => {
      if (opt && revision() !== null) return undefined;
      if (release) return "its update units are missing";
      return binary ? `${binary} is not in a release directory of 'outpost install'` : "it runs from a checkout";
    },
    arch: process.arch,
  };
}

/** The release directory a binary runs from, `<opt>/releases/<version>-<sha12>/outpost`; none elsewhere (dist/). */
export function releaseDirOf(executable: string): string | undefined {
  const dir = dirname(executable);
  const name = basename(dir);
  return basename(dirname(dir)) === "releases" && releaseVersion(name) !== undefined ? name : undefined;
}

/** The revision of the update units installed beside a release (in the rollback script's header). */
function unitsRevision(opt: string | undefined): number | null {
  if (!opt) return null;
  try {
    const head = readFileSync(join(opt, "rollback"), "utf8").slice(0, 1024);
    const m = /^# outpost units revision (\d+)$/m.exec(head);
    // Scripts written before revisions were numbered carry none: that is revision 1.
    return m ? Number(m[1]) : 1;
  } catch {
    return null;
  }
}
