import { createHash } from "node:crypto";
import * as nodeFs from "node:fs";
import { basename, dirname, join } from "node:path";
import { z } from "zod";
import { errorMessage, isOutpostError, OutpostError } from "../core/errors.ts";
import { fsyncPath } from "../core/files.ts";
import { releaseName } from "../version.ts";
import { checkRelease } from "./checks.ts";
import { type Journal, readJournal, updateFiles } from "./journal.ts";
import { signedManifestSchema, verifyManifest } from "./manifest.ts";

/**
 * The file operations the installer uses, and nothing else: the real ones below, or a test's recording file
 * system that keeps only what was fsynced (test/unit/ota-power-cut.test.ts) to replay a power cut after each.
 */
export interface InstallFs {
  exists(path: string): boolean;
  readFile(path: string): Buffer;
  /** Creates or truncates; durable only after `fsync(path)` and an fsync of its directory. */
  writeFile(path: string, data: Uint8Array | string, mode: number): void;
  copyFile(from: string, to: string, mode: number): void;
  sha256(path: string): { sha256: string; size: number };
  fsync(path: string): void;
  rename(from: string, to: string): void;
  symlink(target: string, path: string): void;
  readlink(path: string): string | undefined;
  mkdir(path: string, mode: number): void;
  unlink(path: string): void;
  removeTree(path: string): void;
  list(path: string): string[];
  /** Gives a file the owner of another (the journal, written by root, read by the service user). */
  chownLike(path: string, like: string): void;
}

export const realFs: InstallFs = {
  exists: (p) => nodeFs.existsSync(p),
  readFile: (p) => nodeFs.readFileSync(p),
  writeFile: (p, data, mode) => {
    nodeFs.rmSync(p, { force: true });
    nodeFs.writeFileSync(p, data, { mode, flag: "wx" });
  },
  copyFile: (from, to, mode) => {
    nodeFs.rmSync(to, { force: true });
    nodeFs.copyFileSync(from, to);
    nodeFs.chmodSync(to, mode);
  },
  sha256: (p) => {
    const hash = createHash("sha256");
    const fd = nodeFs.openSync(p, "r");
    const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
    let size = 0;
    try {
      for (;;) {
        const n = nodeFs.readSync(fd, buf, 0, buf.length, null);
        if (n === 0) break;
        hash.update(buf.subarray(0, n));
        size += n;
      }
    } finally {
      nodeFs.closeSync(fd);
    }
    return { sha256: hash.digest("hex"), size };
  },
  fsync: fsyncPath,
  rename: (from, to) => nodeFs.renameSync(from, to),
  symlink: (target, p) => {
    nodeFs.rmSync(p, { force: true });
    nodeFs.symlinkSync(target, p);
  },
  readlink: (p) => {
    try {
      return nodeFs.readlinkSync(p);
    } catch {
      return undefined;
    }
  },
  mkdir: (p, mode) => {
    nodeFs.mkdirSync(p, { recursive: true, mode });
  },
  unlink: (p) => nodeFs.rmSync(p, { force: true }),
  removeTree: (p) => nodeFs.rmSync(p, { recursive: true, force: true }),
  list: (p) => {
    try {
      return nodeFs.readdirSync(p);
    } catch {
      return [];
    }
  },
  chownLike: (p, like) => {
    const st = nodeFs.statSync(like);
    nodeFs.chownSync(p, st.uid, st.gid);
  },
};

export interface ApplyOptions {
  /** `/opt/outpost`: `releases/`, `current`, `previous`. */
  opt: string;
  stateDir: string;
  /** The runtime drop-in that holds the service to trial rules (Restart=no: the first failure rolls back). */
  trialDropIn: string;
  /** `update.trustedKeys` from the device's own configuration file, never from the agent. */
  trustedKeys: readonly string[];
  /** The version and arch of the binary running this: the committed release. */
  version: string;
  arch: string;
  now(): number;
  /** Runs systemctl; tests outside systemd pass a recorder. */
  systemctl(args: string[]): void;
  log(line: string): void;
  fs?: InstallFs;
}

export interface ApplyResult {
  /** The release switched to, when an install ran. */
  installed?: string;
  /** A refused install: its code. */
  refused?: string;
  committed?: boolean;
}

const installRequest = z.strictObject({
  manifest: signedManifestSchema,
  /** The staged file's name in `state.dir/update/`. */
  ready: z.string().regex(/^[0-9a-f]{64}\.ready$/),
});

export const TRIAL_DROP_IN = `# Written by the outpost updater while an update is on trial, removed when the trial ends (and, in /run, by
# a reboot). Without restarts, the first failure of the release on trial fails the unit and OnFailure= returns
# to the previous release; a release that exits 0 by itself (never the agent's way) does the same through
# OnSuccess=. The rollback script ignores both while the unit runs again or the system is stopping.
[Unit]
OnSuccess=outpost-rollback.service

[Service]
Restart=no
`;

/**
 * The privileged half of an update (`outpost update-apply`, run as root by outpost-update.service when the
 * agent leaves a request in `state.dir/update/`). It trusts nothing the agent wrote: the manifest is verified
 * again against the device's own configuration and the staged file hashed again. Every step is idempotent, so
 * a power cut anywhere is followed by the same run from the top (the request stays until the end).
 */
export function applyUpdate(o: ApplyOptions): ApplyResult {
  const fs = o.fs ?? realFs;
  const files = updateFiles(o.stateDir);
  const result: ApplyResult = {};
  if (fs.exists(files.commit)) {
    finishTrial(o, fs);
    result.committed = true;
  }
  if (!fs.exists(files.install)) return result;
  let request: z.output<typeof installRequest> | undefined;
  let name = "unknown";
  let version = "unknown";
  try {
    let raw: unknown;
    try {
      raw = JSON.parse(fs.readFile(files.install).toString("utf8"));
    } catch {
      raw = undefined;
    }
    const parsed = installRequest.safeParse(raw);
    if (!parsed.success) throw new OutpostError("OTA_MANIFEST_INVALID", "the install request is malformed");
    request = parsed.data;
    const m = verifyManifest(request.manifest, o.trustedKeys);
    version = m.version;
    name = releaseName(m.version, m.sha256);
    const journal = readJournal(files.journal);
    const resuming = journal?.state === "trial" && journal.release === name;
    // A run cut short after the switch finds the new release current: the checks were passed then.
    if (!resuming) {
      checkRelease(m, { kind: "agent", version: o.version, arch: o.arch, freeBytes: Infinity, maxSize: Infinity });
    }
    const releaseDir = join(o.opt, "releases", name);
    const binary = join(releaseDir, "outpost");
    const installed = fs.exists(binary) && fs.sha256(binary).sha256 === m.sha256;
    if (!installed) {
      const staged = join(files.dir, request.ready);
      if (!fs.exists(staged)) throw new OutpostError("OTA_HASH_MISMATCH", `${request.ready} is missing`);
      const got = fs.sha256(staged);
      if (got.sha256 !== m.sha256 || got.size !== m.size) {
        throw new OutpostError("OTA_HASH_MISMATCH", `the staged file is not the release the manifest signs`);
      }
      fs.mkdir(join(o.opt, "releases"), 0o755);
      fs.mkdir(releaseDir, 0o755);
      fs.copyFile(staged, `${binary}.new`, 0o755);
      fs.fsync(`${binary}.new`);
      // The copy is checked where it will run from: the staging directory belongs to the agent.
      if (fs.sha256(`${binary}.new`).sha256 !== m.sha256) {
        throw new OutpostError("OTA_HASH_MISMATCH", "the copy in the release directory does not match");
      }
      fs.rename(`${binary}.new`, binary);
      fs.fsync(releaseDir);
      fs.fsync(join(o.opt, "releases"));
    }
    const target = `releases/${name}`;
    const current = fs.readlink(join(o.opt, "current"));
    if (current !== target) {
      if (current === undefined) throw new OutpostError("OTA_INSTALL_FAILED", `${o.opt}/current is missing`);
      const trial: Journal = {
        state: "trial",
        release: name,
        from: { name: basename(current), version: o.version },
        to: { name, version: m.version },
        since: o.now(),
      };
      // The journal says "trial" before `current` moves: the rollback unit acts on it, and needs it then.
      writeShared(fs, files.journal, `${JSON.stringify(trial)}\n`, o.stateDir);
      fs.mkdir(dirname(o.trialDropIn), 0o755);
      atomicWrite(fs, o.trialDropIn, TRIAL_DROP_IN, 0o644);
      o.systemctl(["daemon-reload"]);
      switchLink(fs, join(o.opt, "previous"), current);
      switchLink(fs, join(o.opt, "current"), target);
      o.log(`installed ${name}: current -> ${target}, previous -> ${current}; restarting outpost.service on trial`);
    }
    removeShared(fs, [join(files.dir, request.ready), files.install], files.dir);
    o.systemctl(["restart", "--no-block", "outpost.service"]);
    result.installed = name;
  } catch (err) {
    const code = isOutpostError(err) ? err.code : "OTA_INSTALL_FAILED";
    o.log(`refused ${name}: ${code}: ${errorMessage(err)}`);
    const failed: Journal = { state: "failed", release: name, version, code, reason: errorMessage(err), at: o.now() };
    writeShared(fs, files.journal, `${JSON.stringify(failed)}\n`, o.stateDir);
    removeShared(fs, [...(request ? [join(files.dir, request.ready)] : []), files.install], files.dir);
    result.refused = code;
  }
  return result;
}

/** After a commit: the trial's unit settings go, and every release but `current` and `previous` is pruned. */
function finishTrial(o: ApplyOptions, fs: InstallFs): void {
  if (fs.exists(o.trialDropIn)) {
    fs.unlink(o.trialDropIn);
    fs.fsync(dirname(o.trialDropIn));
    o.systemctl(["daemon-reload"]);
  }
  const keep = new Set(
    [fs.readlink(join(o.opt, "current")), fs.readlink(join(o.opt, "previous"))].map((l) => l && basename(l)),
  );
  for (const entry of fs.list(join(o.opt, "releases"))) {
    if (keep.has(entry)) continue;
    fs.removeTree(join(o.opt, "releases", entry));
    o.log(`pruned release ${entry}`);
  }
  const files = updateFiles(o.stateDir);
  removeShared(fs, [files.commit], files.dir);
}

/** Temp file, fsync, rename, fsync of the directory; `ownerLike`: owned like that path (see writeShared). */
function atomicWrite(fs: InstallFs, path: string, data: string, mode: number, ownerLike?: string): void {
  fs.writeFile(`${path}.tmp`, data, mode);
  if (ownerLike !== undefined) fs.chownLike(`${path}.tmp`, ownerLike);
  fs.fsync(`${path}.tmp`);
  fs.rename(`${path}.tmp`, path);
  fs.fsync(dirname(path));
}

/** A file in the agent's state directory: written as root, owned like the directory, readable by the agent. */
function writeShared(fs: InstallFs, path: string, data: string, stateDir: string): void {
  atomicWrite(fs, path, data, 0o640, stateDir);
}

function removeShared(fs: InstallFs, paths: readonly string[], dir: string): void {
  for (const p of paths) fs.unlink(p);
  fs.fsync(dir);
}

/** A new link beside the old, renamed over it: the path is never without a link. */
function switchLink(fs: InstallFs, path: string, target: string): void {
  if (fs.readlink(path) === target) return;
  fs.symlink(target, `${path}.new`);
  fs.rename(`${path}.new`, path);
  fs.fsync(dirname(path));
}
