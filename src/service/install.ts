import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, lstatSync, mkdirSync, readFileSync, readlinkSync, rmdirSync, rmSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { parsePublicKey } from "../commands/keys.ts";
import { elfMachine } from "../core/elf.ts";
import { OutpostError } from "../core/errors.ts";
import { replaceLink, writeFileAtomically } from "../core/files.ts";
import { withPinnedDir } from "../core/pinned-dir.ts";
import { DEVICE_PUB_FILE, fingerprintOf, MAX_KEY_FILE } from "../kernel/identity.ts";
import { releaseName } from "../version.ts";
import {
  deviceReadme,
  LAYOUT,
  rollbackScript,
  sysusersText,
  tmpfilesText,
  type UnitOptions,
  unitText,
  updateUnits,
} from "./unit.ts";

/** One thing install wants on disk, at a path inside the target root. */
type Entry =
  | { kind: "dir"; path: string; mode: number }
  | { kind: "file"; path: string; mode: number; content: Buffer | string; keep?: boolean }
  | { kind: "link"; path: string; target: string };

export interface InstallOptions {
  /** The target tree: "/" for the machine itself, else a directory (tests, image builders). */
  root: string;
  /** The binary to install (the running executable). */
  binary: string;
  version: string;
  /** A config file to install as /etc/outpost/config.yaml (already validated). Absent: keep, or the example. */
  config?: string;
  unit: UnitOptions;
}

export interface Change {
  path: string;
  action: "created" | "updated" | "unchanged" | "removed" | "replaced";
  note?: string;
}

/** Two builds of one version never share a directory: the name carries the file's sha256. */
export function binaryReleaseName(binary: string, version: string): string {
  return releaseName(version, createHash("sha256").update(readFileSync(binary)).digest("hex"));
}

/** Refuses a binary built for another architecture than the target's own programs (/bin/sh). */
export function checkArchitecture(root: string, binary: string): void {
  const ours = elfMachine(binary);
  let theirs: string | undefined;
  try {
    theirs = elfMachine(join(root, "bin/sh"));
  } catch {
    return; // an empty tree (tests, a fresh image): nothing to compare with
  }
  if (ours !== undefined && theirs !== undefined && ours !== theirs) {
    const build = { x86_64: "outpost-linux-x64", aarch64: "outpost-linux-arm64" }[theirs];
    const hint = build ? `copy ${build} instead` : "there is no build for it";
    throw new OutpostError(
      "INSTALL_WRONG_ARCH",
      `this binary is for ${ours} but ${root === "/" ? "this machine" : root} runs ${theirs}: ${hint}`,
    );
  }
}

/** Everything install wants, in the order it is written (a release before the links that name it). */
export function installPlan(o: InstallOptions, exampleConfig: string, tmpfilesExtra: readonly string[]): Entry[] {
  const release = binaryReleaseName(o.binary, o.version);
  const releaseDir = `${LAYOUT.releases}/${release}`;
  const current = `releases/${release}`;
  let before: string | undefined;
  try {
    before = readlinkSync(join(o.root, LAYOUT.current));
  } catch {
    before = undefined;
  }
  // The release being replaced stays one step back, for a manual or automatic return to it.
  const previous: Entry[] =
    before !== undefined && before !== current ? [{ kind: "link", path: LAYOUT.previous, target: before }] : [];
  return [
    { kind: "dir", path: LAYOUT.opt, mode: 0o755 },
    { kind: "dir", path: LAYOUT.releases, mode: 0o755 },
    { kind: "dir", path: LAYOUT.updateRecords, mode: 0o755 },
    { kind: "dir", path: releaseDir, mode: 0o755 },
    { kind: "file", path: `${releaseDir}/outpost`, mode: 0o755, content: readFileSync(o.binary) },
    ...previous,
    { kind: "link", path: LAYOUT.current, target: current },
    { kind: "link", path: LAYOUT.bin, target: `${LAYOUT.current}/outpost` },
    { kind: "dir", path: LAYOUT.etc, mode: 0o750 },
    o.config === undefined
      ? { kind: "file", path: LAYOUT.config, mode: 0o640, content: exampleConfig, keep: true }
      : { kind: "file", path: LAYOUT.config, mode: 0o640, content: readFileSync(o.config) },
    { kind: "dir", path: LAYOUT.state, mode: 0o750 },
    { kind: "file", path: LAYOUT.sysusers, mode: 0o644, content: sysusersText() },
    { kind: "file", path: LAYOUT.tmpfiles, mode: 0o644, content: tmpfilesText(tmpfilesExtra) },
    { kind: "file", path: LAYOUT.unit, mode: 0o644, content: unitText(o.unit) },
    { kind: "link", path: LAYOUT.wants, target: LAYOUT.unit },
    { kind: "file", path: LAYOUT.rollbackScript, mode: 0o755, content: rollbackScript() },
    { kind: "file", path: LAYOUT.readme, mode: 0o644, content: deviceReadme() },
    ...(Object.entries(updateUnits()) as [keyof ReturnType<typeof updateUnits>, string][]).map(
      ([name, content]): Entry => ({ kind: "file", path: LAYOUT[name], mode: 0o644, content }),
    ),
    { kind: "link", path: LAYOUT.updateWants, target: LAYOUT.updatePath },
    { kind: "link", path: LAYOUT.rollbackWants, target: LAYOUT.rollbackPath },
  ];
}

/**
 * tmpfiles lines that let the service user read the files the config names: each one others cannot read
 * gets group outpost and group read. Returns the lines and what to tell the operator.
 */
export function secretAccess(root: string, paths: readonly string[]): { lines: string[]; notes: string[] } {
  const lines: string[] = [];
  const notes: string[] = [];
  const gid = groupId(root, LAYOUT.user);
  for (const path of paths) {
    let st: { mode: number; gid: number };
    try {
      st = statSync(join(root, path));
    } catch {
      notes.push(`${path}: named by the config but missing`);
      continue;
    }
    const mode = st.mode & 0o7777;
    if ((mode & 0o004) !== 0) continue;
    // The line stays once the access is given, so that a second install finds the same tmpfiles.d file.
    const wanted = mode | 0o040;
    lines.push(`z ${path} ${wanted.toString(8).padStart(4, "0")} - ${LAYOUT.user} -`);
    if (st.gid === gid && (mode & 0o040) !== 0) continue;
    notes.push(`${path}: group set to ${LAYOUT.user}, mode ${wanted.toString(8)} (the service user reads it)`);
  }
  return { lines, notes };
}

/** A group's id from the tree's own /etc/group (not this machine's, under --root). */
function groupId(root: string, name: string): number | undefined {
  try {
    const line = readFileSync(join(root, "etc/group"), "utf8")
      .split("\n")
      .find((l) => l.startsWith(`${name}:`));
    const gid = Number(line?.split(":")[2]);
    return Number.isInteger(gid) ? gid : undefined;
  } catch {
    return undefined;
  }
}

/** Writes what differs, leaves the rest untouched; a second run reports every path unchanged. */
export function apply(root: string, plan: readonly Entry[]): Change[] {
  const changes: Change[] = [];
  for (const entry of plan) {
    const path = join(root, entry.path);
    const existing = lstatOrUndefined(path);
    if (entry.kind === "dir") {
      if (existing?.isDirectory()) {
        if ((existing.mode & 0o7777) === entry.mode) changes.push({ path: entry.path, action: "unchanged" });
        else {
          chmodSync(path, entry.mode);
          changes.push({ path: entry.path, action: "updated", note: `mode ${entry.mode.toString(8)}` });
        }
        continue;
      }
      if (existing) rmSync(path, { recursive: true, force: true });
      // Parents the plan does not name (/var/lib in an empty tree) get the usual 0755, not the entry's mode.
      mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
      mkdirSync(path, { mode: entry.mode });
      chmodSync(path, entry.mode);
      changes.push({ path: entry.path, action: existing ? "replaced" : "created" });
      continue;
    }
    if (entry.kind === "link") {
      if (existing?.isSymbolicLink() && readlinkSync(path) === entry.target) {
        changes.push({ path: entry.path, action: "unchanged" });
        continue;
      }
      mkdirSync(dirname(path), { recursive: true });
      const note = existing && !existing.isSymbolicLink() ? "a plain file was here" : undefined;
      // A rename cannot replace a directory; a link or a file is replaced without a moment of absence.
      if (existing?.isDirectory()) rmSync(path, { recursive: true, force: true });
      replaceLink(path, entry.target);
      changes.push({ path: entry.path, action: existing ? "replaced" : "created", ...(note ? { note } : {}) });
      continue;
    }
    const content = typeof entry.content === "string" ? Buffer.from(entry.content) : entry.content;
    if (existing?.isFile()) {
      const same = existing.size === content.length && readFileSync(path).equals(content);
      if (same || entry.keep) {
        if ((existing.mode & 0o7777) !== entry.mode && !entry.keep) {
          chmodSync(path, entry.mode);
          changes.push({ path: entry.path, action: "updated", note: `mode ${entry.mode.toString(8)}` });
        } else
          changes.push({ path: entry.path, action: "unchanged", ...(entry.keep && !same ? { note: "kept" } : {}) });
        continue;
      }
    }
    if (existing && !existing.isFile()) rmSync(path, { recursive: true, force: true });
    writeFileAtomically(path, content, entry.mode);
    changes.push({ path: entry.path, action: existing ? "updated" : "created" });
  }
  return changes;
}

/** What uninstall removes; `purge` adds config and state. */
export function uninstallPaths(purge: boolean): string[] {
  const paths: string[] = [
    LAYOUT.wants,
    LAYOUT.updateWants,
    LAYOUT.rollbackWants,
    LAYOUT.unit,
    LAYOUT.updatePath,
    LAYOUT.updateService,
    LAYOUT.rollbackPath,
    LAYOUT.rollbackService,
    LAYOUT.exitRecordDropIn,
    LAYOUT.bin,
    LAYOUT.opt,
    LAYOUT.sysusers,
    LAYOUT.tmpfiles,
  ];
  if (purge) paths.push(LAYOUT.etc, LAYOUT.state);
  return paths;
}

export function remove(root: string, paths: readonly string[]): Change[] {
  const changes: Change[] = [];
  for (const p of paths) {
    const path = join(root, p);
    const existing = lstatOrUndefined(path);
    if (!existing) continue;
    // /usr/local/bin/outpost is ours only as the link install made; a file someone put there stays.
    if (p === LAYOUT.bin && !existing.isSymbolicLink()) {
      changes.push({ path: p, action: "unchanged", note: "not a link made by install: left alone" });
      continue;
    }
    rmSync(path, { recursive: true, force: true });
    changes.push({ path: p, action: "removed" });
    // The drop-in's directory goes with it once empty: an operator's own drop-ins there (systemctl edit) stay.
    if (p === LAYOUT.exitRecordDropIn) {
      try {
        rmdirSync(dirname(path));
        changes.push({ path: dirname(p), action: "removed" });
      } catch {
        // Not empty, or gone: left as it is.
      }
    }
  }
  return changes;
}

/** Runs a systemd tool on the machine itself (never with --root); its output goes to the operator. */
export function systemTool(command: string, args: readonly string[]): void {
  execFileSync(command, args, { stdio: ["ignore", "inherit", "inherit"] });
}

function lstatOrUndefined(path: string) {
  try {
    return lstatSync(path);
  } catch {
    return undefined;
  }
}

/** The service user's uid from the system's user database (never from a file the agent can write). */
export function serviceUid(): number {
  const uid = Number(execFileSync("id", ["-u", LAYOUT.user], { encoding: "utf8" }).trim());
  if (!Number.isInteger(uid) || uid <= 0) throw new OutpostError("INSTALL_REFUSED", `no uid for ${LAYOUT.user}`);
  return uid;
}

/**
 * The key the agent made in its state directory (`device.pub`), read as root reads what the
 * agent wrote: the directory pinned and owned by the service user, the file opened once without following
 * links, a regular file of that user, bounded. Undefined while the agent has not made it yet.
 */
export function deviceKey(stateDir: string, uid: number): { publicKey: string; fingerprint: string } | undefined {
  return withPinnedDir(stateDir, uid, (dir) => {
    if (!dir.has(DEVICE_PUB_FILE)) return undefined;
    const text = dir.read(DEVICE_PUB_FILE, MAX_KEY_FILE).toString("utf8").trim();
    parsePublicKey(text);
    return { publicKey: text, fingerprint: fingerprintOf(text) };
  });
}
