import { basename, dirname, join } from "node:path";
import { z } from "zod";
import { errorMessage, isOutpostError, OutpostError } from "../core/errors.ts";
import type { PinnedDir } from "../core/pinned-dir.ts";
import { ROOT_BOUNDARY_REVISION, releaseName, releaseVersion, UNITS_MARKER_PATTERN } from "../version.ts";
import { checkRelease } from "./checks.ts";
import { atomicWrite, type InstallFs, readText, realFs, switchLink } from "./install-fs.ts";
import { type Manifest, signedManifestSchema, verifyManifest } from "./manifest.ts";
import {
  type RequestRecord,
  readRecord,
  requestId,
  requestRecordSchema,
  rootRecordPaths,
  type TrialRecord,
  trialRecordSchema,
} from "./root-record.ts";

export { type InstallFs, realFs } from "./install-fs.ts";

/** A root file that a committed release keeps as it carries it (the rollback script, the update units). */
export interface RefreshedFile {
  path: string;
  content: string;
  mode: number;
}

export interface ApplyOptions {
  /** `/opt/outpost`: `releases/`, `current`, `previous`. */
  opt: string;
  /** Root's own record of the update (root-record.ts): `/opt/outpost/update`. */
  records: string;
  stateDir: string;
  /** The service user's uid, from the system's user database: the owner the agent's files must have. */
  serviceUid: number;
  /** The runtime drop-in that holds the service to trial rules (Restart=no: the first failure rolls back). */
  trialDropIn: string;
  /** `update.trustedKeys` from the device's own configuration file, never from the agent. */
  trustedKeys: readonly string[];
  /** The version and arch of the binary running this: the committed release. */
  version: string;
  arch: string;
  /** The release directory this binary runs from (`<version>-<sha12>`), when it runs from the layout. */
  self?: string;
  /** Written after a commit where they differ (a release that fixes its units reaches devices by itself). */
  refresh?: readonly RefreshedFile[];
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
  /** Root files the commit rewrote (refresh). */
  refreshed?: string[];
  /** A trial begun by an installer older than root's records, adopted once. */
  adopted?: boolean;
}

/** The agent's files in `state.dir/update/` that root reads or removes (by these names only). */
export const AGENT_FILES = {
  install: "install.json",
  commit: "commit.request",
} as const;

/** An install request carries the signed manifest (its index may be inline: 150 KB and more). */
export const MAX_INSTALL_REQUEST = 1024 * 1024;

const installRequest = z.strictObject({
  /** The update command's request id: root's records name it, and never act on it twice. */
  id: requestId,
  manifest: signedManifestSchema,
  /** The staged file's name in `state.dir/update/`. */
  ready: z.string().regex(/^[0-9a-f]{64}\.ready$/),
});
export type InstallRequest = z.output<typeof installRequest>;

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
 * agent leaves a request in `state.dir/update/`). It trusts nothing the agent wrote and acts on nothing there
 * by path (docs/ota.md, "The root boundary"): the agent's directory is pinned, the request and the staged file
 * are read once through a checked descriptor, the manifest is verified again against the device's own
 * configuration, the release is copied into root's directory while hashing and hashed again there. Where the
 * update stands is root's own record (root-record.ts), never the agent's journal. Every step is idempotent,
 * so a power cut anywhere is followed by the same run from the top (the request stays until the end).
 */
export function applyUpdate(o: ApplyOptions): ApplyResult {
  const fs = o.fs ?? realFs;
  const agentDir = join(o.stateDir, "update");
  return fs.pinned(agentDir, o.serviceUid, (agent) => {
    const result: ApplyResult = {};
    if (agent.has(AGENT_FILES.commit)) {
      Object.assign(result, commitTrial(o, fs));
      agent.remove(AGENT_FILES.commit);
      agent.sync();
    }
    if (agent.has(AGENT_FILES.install)) Object.assign(result, install(o, fs, agent));
    return result;
  });
}

function install(o: ApplyOptions, fs: InstallFs, agent: PinnedDir): ApplyResult {
  const records = rootRecordPaths(o.records);
  const trial = readRecord(readText(fs, records.trial), trialRecordSchema);
  const handled = readRecord(readText(fs, records.request), requestRecordSchema);
  let request: InstallRequest | undefined;
  let name = "unknown";
  let version = "unknown";
  const done = () => {
    agent.remove(AGENT_FILES.install);
    if (request) agent.remove(request.ready);
    agent.sync();
  };
  try {
    let raw: unknown;
    try {
      raw = JSON.parse(agent.read(AGENT_FILES.install, MAX_INSTALL_REQUEST).toString("utf8"));
    } catch (err) {
      if (isOutpostError(err)) throw err;
      raw = undefined;
    }
    const parsed = installRequest.safeParse(raw);
    if (!parsed.success) throw new OutpostError("OTA_MANIFEST_INVALID", "the install request is malformed");
    request = parsed.data;
    if (handled?.request === request.id) {
      // Handled before (a rerun after a cut at the very end, or the agent writing it again): removed only.
      o.log(`request ${request.id} was handled already (${handled.state}): removed`);
      done();
      return {};
    }
    const m = verifyManifest(request.manifest, o.trustedKeys);
    version = m.version;
    name = releaseName(m.version, m.sha256);
    const current = fs.readlink(join(o.opt, "current"));
    if (current === undefined) throw new OutpostError("OTA_INSTALL_FAILED", `${o.opt}/current is missing`);
    const onTrial = trial?.state === "trial" && current === `releases/${trial.release}`;
    // Root's own record, never the agent's journal, says whether this request already switched (a cut after).
    const resuming = onTrial && trial.request === request.id && trial.release === name;
    if (onTrial && !resuming) throw new OutpostError("OTA_BUSY", `${trial.release} is on trial`);
    // Resumed, the running binary may be the new release: the checks are those of the release it came from.
    checkRelease(m, {
      kind: "agent",
      version: resuming ? trial.from.version : o.version,
      arch: o.arch,
      freeBytes: Infinity,
      maxSize: Infinity,
    });
    const releaseDir = join(o.opt, "releases", name);
    const binary = join(releaseDir, "outpost");
    // Releases a rollback left behind go before another comes in: only current and previous stay.
    prune(o, fs, [name]);
    const copied = !(fs.exists(binary) && fs.sha256(binary).sha256 === m.sha256);
    if (copied) {
      fs.mkdir(join(o.opt, "releases"), 0o755);
      fs.mkdir(releaseDir, 0o755);
      copyRelease(fs, agent, request.ready, m, `${binary}.new`);
      fs.rename(`${binary}.new`, binary);
      fs.fsync(releaseDir);
      fs.fsync(join(o.opt, "releases"));
    }
    // A release without the root boundary would bring back an installer that trusts the agent: a signed
    // downgrade replayed by the agent must never reach one (docs/ota.md, "The root boundary").
    const revision = Number(fs.scan(binary, UNITS_MARKER_PATTERN)?.[1] ?? 0);
    if (revision < ROOT_BOUNDARY_REVISION) {
      if (copied) fs.removeTree(releaseDir);
      throw new OutpostError(
        "OTA_UNSAFE_RELEASE",
        `${name} carries units revision ${revision || "none"}, below the root boundary (${ROOT_BOUNDARY_REVISION})`,
      );
    }
    const target = `releases/${name}`;
    if (current !== target) {
      const record: TrialRecord = {
        state: "trial",
        release: name,
        from: { name: basename(current), version: o.version },
        to: { name, version: m.version },
        since: o.now(),
        request: request.id,
      };
      // Root's record says "trial" before `current` moves: the rollback unit acts on it, and needs it then.
      writeRecord(fs, records.trial, record);
      fs.mkdir(dirname(o.trialDropIn), 0o755);
      atomicWrite(fs, o.trialDropIn, TRIAL_DROP_IN, 0o644);
      o.systemctl(["daemon-reload"]);
      switchLink(fs, join(o.opt, "previous"), current);
      switchLink(fs, join(o.opt, "current"), target);
      o.log(`installed ${name}: current -> ${target}, previous -> ${current}; restarting outpost.service on trial`);
    }
    o.systemctl(["restart", "--no-block", "outpost.service"]);
    writeRecord(fs, records.request, {
      request: request.id,
      state: "installed",
      release: name,
      version: m.version,
      at: o.now(),
    });
    done();
    return { installed: name };
  } catch (err) {
    const code = isOutpostError(err) ? err.code : "OTA_INSTALL_FAILED";
    o.log(`refused ${name}: ${code}: ${errorMessage(err)}`);
    const failed: RequestRecord = {
      ...(request ? { request: request.id } : {}),
      state: "failed",
      release: name,
      version,
      code,
      reason: errorMessage(err),
      at: o.now(),
    };
    writeRecord(fs, records.request, failed);
    done();
    return { refused: code };
  }
}

/**
 * The staged file into root's own 0600 file beside where it will run, read once through one checked
 * descriptor while hashing; then root's copy hashed again, and only then made executable. Any refusal
 * removes the copy (and a release directory left empty).
 */
function copyRelease(fs: InstallFs, agent: PinnedDir, ready: string, m: Manifest, to: string): void {
  fs.unlink(to);
  try {
    const copied = agent.copyOut(ready, m.size, to, 0o600);
    if (copied !== m.sha256) {
      throw new OutpostError("OTA_HASH_MISMATCH", "the staged file is not the release the manifest signs");
    }
    if (fs.sha256(to).sha256 !== m.sha256) {
      throw new OutpostError("OTA_HASH_MISMATCH", "the copy in the release directory does not match");
    }
    fs.chmod(to, 0o755);
    fs.fsync(to);
  } catch (err) {
    fs.unlink(to);
    const dir = dirname(to);
    if (fs.list(dir).length === 0) fs.removeTree(dir);
    throw err;
  }
}

/**
 * The agent's word that its trial passed. Root acts only on a trial it recorded itself whose release is
 * still `current`; a trial an older installer began (it kept no record of its own) is adopted once, when
 * this binary is that release and `previous` exists.
 */
function commitTrial(o: ApplyOptions, fs: InstallFs): ApplyResult {
  const records = rootRecordPaths(o.records);
  let trial = readRecord(readText(fs, records.trial), trialRecordSchema);
  const current = fs.readlink(join(o.opt, "current"));
  const previous = fs.readlink(join(o.opt, "previous"));
  let adopted = false;
  const neverRecorded = !fs.exists(records.trial) && !fs.exists(records.request);
  if (neverRecorded && o.self !== undefined && current === `releases/${o.self}` && previous !== undefined) {
    trial = {
      state: "trial",
      release: o.self,
      from: { name: basename(previous), version: versionOf(basename(previous)) },
      to: { name: o.self, version: o.version },
      since: o.now(),
      request: "legacy",
    };
    writeRecord(fs, records.trial, trial);
    adopted = true;
    o.log(`adopted the trial of ${o.self} begun by an older installer`);
  }
  if (trial?.state !== "trial" || current !== `releases/${trial.release}`) {
    o.log("a commit request, but root records no trial of the current release: ignored");
    return {};
  }
  const refreshed = finishTrial(o, fs);
  writeRecord(fs, records.trial, { ...trial, state: "committed", at: o.now() });
  o.log(`committed ${trial.release}`);
  return { committed: true, ...(refreshed.length > 0 ? { refreshed } : {}), ...(adopted ? { adopted } : {}) };
}

/** Removes every release but `current`, `previous` and `also`; returns the names kept that exist. */
function prune(o: ApplyOptions, fs: InstallFs, also: readonly string[]): Set<string> {
  const keep = new Set<string>(also);
  for (const link of ["current", "previous"]) {
    const target = fs.readlink(join(o.opt, link));
    if (target) keep.add(basename(target));
  }
  for (const entry of fs.list(join(o.opt, "releases"))) {
    if (keep.has(entry)) continue;
    fs.removeTree(join(o.opt, "releases", entry));
    o.log(`pruned release ${entry}`);
  }
  return keep;
}

/** `<version>-<sha12>` -> version. */
function versionOf(release: string): string {
  return releaseVersion(release) ?? release;
}

/** Root's record: in root's directory, 0644 (the agent reads it), atomic. */
function writeRecord(fs: InstallFs, path: string, record: TrialRecord | RequestRecord): void {
  // Made by install; a device installed before root kept records has none yet.
  if (!fs.exists(dirname(path))) fs.mkdir(dirname(path), 0o755);
  atomicWrite(fs, path, `${JSON.stringify(record)}\n`, 0o644);
}

/**
 * After a commit: the trial's unit settings go, every release but `current` and `previous` is pruned, and
 * the root files this release carries (the rollback script, the update units) replace older ones. Returns
 * the paths rewritten.
 */
function finishTrial(o: ApplyOptions, fs: InstallFs): string[] {
  let reload = false;
  if (fs.exists(o.trialDropIn)) {
    fs.unlink(o.trialDropIn);
    fs.fsync(dirname(o.trialDropIn));
    reload = true;
  }
  const keep = prune(o, fs, []);
  for (const entry of keep) {
    const binary = entry && join(o.opt, "releases", entry, "outpost");
    if (binary && fs.exists(binary) && fs.ownByRoot(binary, 0o755)) o.log(`made ${binary} root's, 0755`);
  }
  const refreshed: string[] = [];
  for (const file of o.refresh ?? []) {
    if (fs.exists(file.path) && fs.readFile(file.path).equals(Buffer.from(file.content))) continue;
    // A drop-in's directory (outpost.service.d) did not exist on a device installed before it: root's own.
    if (!fs.exists(dirname(file.path))) fs.mkdir(dirname(file.path), 0o755);
    atomicWrite(fs, file.path, file.content, file.mode);
    refreshed.push(file.path);
    o.log(`refreshed ${file.path}`);
  }
  if (reload || refreshed.length > 0) o.systemctl(["daemon-reload"]);
  return refreshed;
}
