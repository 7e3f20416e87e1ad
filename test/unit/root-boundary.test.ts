// Issue 20: root acts only on its own records and reaches the agent's directory only pinned. The installer's
// decisions on a recording file system (what a forged agent journal, a replayed request, a trial begun by an
// older installer lead to), and the pinned directory's checks on the real file system (as root, with files
// of another uid standing in for the agent's).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  chownSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { readRootView } from "../../src/cli/update-apply-command.ts";
import { generateKeys, parsePrivateKey } from "../../src/commands/keys.ts";
import { isOutpostError } from "../../src/core/errors.ts";
import { withPinnedDir } from "../../src/core/pinned-dir.ts";
import { chunk, DEFAULT_CHUNKS } from "../../src/ota/chunks.ts";
import { type ApplyOptions, applyUpdate, realFs } from "../../src/ota/install.ts";
import { type Manifest, signManifest } from "../../src/ota/manifest.ts";
import { releaseName, UNITS_MARKER, UNITS_MARKER_PATTERN } from "../../src/version.ts";
import { RecordingFs } from "../helpers/recording-fs.ts";
import { checkTraces, documentedRootPaths } from "../helpers/strace.ts";

const OPT = "/opt/outpost";
const RECORDS = `${OPT}/update`;
const UPDATE = "/var/lib/outpost/update";
const keys = generateKeys();
const key = parsePrivateKey(keys.privatePem);
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

function release(version: string, kind: "agent" | "model" = "agent", marker = UNITS_MARKER, allowDowngrade = false) {
  const bytes = Buffer.concat([Buffer.from(`${version} ${marker}`), randomBytes(20_000)]);
  const manifest: Manifest = {
    format: 1,
    kind,
    artifact: "artifact",
    version,
    target: { os: "linux", arch: kind === "model" ? "any" : "x64" },
    sha256: sha(bytes),
    size: bytes.length,
    index: { params: DEFAULT_CHUNKS, chunks: chunk(bytes).map((c) => [c.size, c.sha256]) },
    allowDowngrade,
    created: 1,
  };
  return { bytes, name: releaseName(version, sha(bytes)), signed: signManifest(manifest, key) };
}

const v1 = release("1.0.0");
const v0 = release("0.9.0");
const v2 = release("1.1.0");

function options(fs: RecordingFs, calls: string[][] = [], extra: Partial<ApplyOptions> = {}): ApplyOptions {
  return {
    opt: OPT,
    records: RECORDS,
    stateDir: "/var/lib/outpost",
    serviceUid: 999,
    trialDropIn: "/run/systemd/system/outpost.service.d/trial.conf",
    trustedKeys: [keys.publicText],
    version: "1.0.0",
    arch: "x64",
    now: () => 5,
    systemctl: (args) => calls.push(args),
    log: () => {},
    fs,
    ...extra,
  };
}

/** v1 installed and running (and v0 before it), `r` staged with a request of id `id`. */
function device(r: ReturnType<typeof release>, id = "req-1", files: Record<string, string | Buffer> = {}) {
  return RecordingFs.from({
    [`${OPT}/releases/${v0.name}/outpost`]: v0.bytes,
    [`${OPT}/releases/${v1.name}/outpost`]: v1.bytes,
    [`${OPT}/current`]: { link: `releases/${v1.name}` },
    [`${OPT}/previous`]: { link: `releases/${v0.name}` },
    [`${UPDATE}/${sha(r.bytes)}.ready`]: r.bytes,
    [`${UPDATE}/install.json`]: JSON.stringify({ id, manifest: r.signed, ready: `${sha(r.bytes)}.ready` }),
    ...files,
  });
}

const json = (fs: RecordingFs, path: string) => JSON.parse(fs.readFile(path).toString()) as Record<string, unknown>;

describe("root acts on its own records only", () => {
  it("a forged agent journal saying the staged release is on trial skips no check (downgrade, a model as the agent)", () => {
    const model = release("2.0.0", "model");
    for (const [r, code] of [
      [v0, "OTA_DOWNGRADE"],
      [model, "OTA_KIND_UNSUPPORTED"],
    ] as const) {
      const forged = { state: "trial", release: r.name, from: { name: v1.name, version: "1.0.0" } };
      const fs = device(r, "req-1", { [`${UPDATE}/journal.json`]: JSON.stringify({ ...forged, to: forged.from }) });
      assert.deepEqual(applyUpdate(options(fs)), { refused: code });
      assert.equal(fs.readlink(`${OPT}/current`), `releases/${v1.name}`);
      assert.equal(json(fs, `${RECORDS}/request.json`).code, code);
      // v0 is installed already (previous); the model never gets a release directory.
      if (r === model) assert.ok(!fs.exists(`${OPT}/releases/${r.name}`));
    }
  });

  it("a release below the root boundary is never installed, even signed as a downgrade; the one kept as previous stays", () => {
    // The agent replays a signed downgrade to a release whose units trusted the agent (no units marker).
    const before = release("0.8.0", "agent", "outpost-release;version=0.8.0;", true);
    const fs = device(before, "req-1");
    assert.deepEqual(applyUpdate(options(fs)), { refused: "OTA_UNSAFE_RELEASE" });
    assert.equal(fs.readlink(`${OPT}/current`), `releases/${v1.name}`);
    assert.ok(!fs.exists(`${OPT}/releases/${before.name}`), "the copy is removed");
    // Already on disk as previous (installed before the boundary): refused, and kept for the way back.
    const previous = release("0.7.0", "agent", "", true);
    const kept = RecordingFs.from({
      [`${OPT}/releases/${previous.name}/outpost`]: previous.bytes,
      [`${OPT}/releases/${v1.name}/outpost`]: v1.bytes,
      [`${OPT}/current`]: { link: `releases/${v1.name}` },
      [`${OPT}/previous`]: { link: `releases/${previous.name}` },
      [`${UPDATE}/install.json`]: JSON.stringify({
        id: "r",
        manifest: previous.signed,
        ready: `${sha(previous.bytes)}.ready`,
      }),
    });
    assert.deepEqual(applyUpdate(options(kept)), { refused: "OTA_UNSAFE_RELEASE" });
    assert.ok(kept.exists(`${OPT}/releases/${previous.name}/outpost`));
    // A signed downgrade that keeps the boundary is the operator's call, as before.
    const back = release("0.9.5", "agent", UNITS_MARKER, true);
    assert.deepEqual(applyUpdate(options(device(back, "req-2"))), { installed: back.name });
  });

  it("a request is acted on once: the same id again is removed only; a new id after a refusal installs", () => {
    const fs = device(v0, "req-1");
    assert.deepEqual(applyUpdate(options(fs)), { refused: "OTA_DOWNGRADE" });
    assert.ok(!fs.exists(`${UPDATE}/install.json`), "the refused request is consumed");
    // The agent writes the same request again: nothing is checked or recorded anew, the file goes.
    fs.writeFile(
      `${UPDATE}/install.json`,
      JSON.stringify({ id: "req-1", manifest: v2.signed, ready: `${sha(v2.bytes)}.ready` }),
      0o600,
    );
    const before = fs.readFile(`${RECORDS}/request.json`);
    assert.deepEqual(applyUpdate(options(fs)), {});
    assert.ok(!fs.exists(`${UPDATE}/install.json`));
    assert.ok(fs.readFile(`${RECORDS}/request.json`).equals(before));
    // A good request after it.
    fs.writeFile(`${UPDATE}/${sha(v2.bytes)}.ready`, v2.bytes, 0o600);
    const good = { id: "req-2", manifest: v2.signed, ready: `${sha(v2.bytes)}.ready` };
    fs.writeFile(`${UPDATE}/install.json`, JSON.stringify(good), 0o600);
    const calls: string[][] = [];
    assert.deepEqual(applyUpdate(options(fs, calls)), { installed: v2.name });
    assert.equal(fs.readlink(`${OPT}/current`), `releases/${v2.name}`);
    assert.equal(json(fs, `${RECORDS}/trial.json`).request, "req-2");
    assert.equal(json(fs, `${RECORDS}/request.json`).state, "installed");
    assert.deepEqual(calls.at(-1), ["restart", "--no-block", "outpost.service"]);
  });

  it("no second install while root's record has a trial of the current release (OTA_BUSY), the trial untouched", () => {
    const fs = device(v2, "req-9", {
      [`${RECORDS}/trial.json`]: JSON.stringify({
        state: "trial",
        release: v1.name,
        from: { name: v0.name, version: "0.9.0" },
        to: { name: v1.name, version: "1.0.0" },
        since: 1,
        request: "req-8",
      }),
    });
    const trial = fs.readFile(`${RECORDS}/trial.json`);
    assert.deepEqual(applyUpdate(options(fs)), { refused: "OTA_BUSY" });
    assert.ok(fs.readFile(`${RECORDS}/trial.json`).equals(trial));
  });

  it("a commit request without root's record of a trial of the current release is removed and ignored", () => {
    const fs = device(v2, "req-1", {
      [`${RECORDS}/request.json`]: JSON.stringify({ state: "failed", release: "x", version: "x", at: 1 }),
      [`${UPDATE}/commit.request`]: "x",
      [`${UPDATE}/journal.json`]: JSON.stringify({ state: "trial", release: v1.name }),
    });
    fs.unlink(`${UPDATE}/install.json`);
    const calls: string[][] = [];
    assert.deepEqual(applyUpdate(options(fs, calls)), {});
    assert.ok(!fs.exists(`${UPDATE}/commit.request`));
    assert.deepEqual(fs.list(`${OPT}/releases`).sort(), [v0.name, v1.name].sort(), "nothing pruned");
    assert.deepEqual(calls, []);
  });

  it("a trial an older installer began is adopted once, when this binary is current and previous exists; the commit refreshes root's files", () => {
    const refresh = [{ path: `${OPT}/rollback`, content: "#!/bin/sh\n# outpost units revision 2\n", mode: 0o755 }];
    const legacy = () =>
      device(v2, "unused", {
        [`${OPT}/rollback`]: "#!/bin/sh\n# old\n",
        [`${UPDATE}/commit.request`]: v1.name,
      });
    const fs = legacy();
    fs.unlink(`${UPDATE}/install.json`);
    const calls: string[][] = [];
    const result = applyUpdate(options(fs, calls, { self: v1.name, refresh }));
    assert.deepEqual(result, { committed: true, adopted: true, refreshed: [`${OPT}/rollback`] });
    assert.equal(fs.readFile(`${OPT}/rollback`).toString(), refresh[0]?.content);
    const trial = json(fs, `${RECORDS}/trial.json`);
    assert.equal(trial.state, "committed");
    assert.equal(trial.request, "legacy");
    assert.deepEqual(calls, [["daemon-reload"]]);
    // Another binary than the current release adopts nothing; nor does one once root has records.
    const other = legacy();
    other.unlink(`${UPDATE}/install.json`);
    assert.deepEqual(applyUpdate(options(other, [], { self: v0.name, refresh })), {});
    assert.ok(!other.exists(`${RECORDS}/trial.json`));
    fs.writeFile(`${UPDATE}/commit.request`, "again", 0o600);
    assert.deepEqual(applyUpdate(options(fs, [], { self: v1.name, refresh })), {});
  });
});

describe("the pinned directory (real file system, as root)", { skip: process.getuid?.() !== 0 }, () => {
  const base = mkdtempSync(join(tmpdir(), "outpost-pinned-"));
  after(() => rmSync(base, { recursive: true, force: true }));
  const AGENT = 65534; // nobody stands in for the service user
  const dir = join(base, "update");
  mkdirSync(dir);
  chownSync(dir, AGENT, AGENT);
  const own = (name: string, data: string) => {
    writeFileSync(join(dir, name), data);
    chownSync(join(dir, name), AGENT, AGENT);
  };
  const refused = (fn: () => unknown, what: string) =>
    assert.throws(fn, (e) => isOutpostError(e, "OTA_STAGED_INVALID"), what);

  it("reads a regular file of the owner; refuses a symlink, a FIFO, another owner's file, a wrong size", () => {
    own("good", "hello");
    writeFileSync(join(base, "secret"), "root only");
    symlinkSync(join(base, "secret"), join(dir, "link"));
    execFileSync("mkfifo", [join(dir, "fifo")]);
    chownSync(join(dir, "fifo"), AGENT, AGENT);
    writeFileSync(join(dir, "roots"), "not the agent's");
    withPinnedDir(dir, AGENT, (d) => {
      assert.equal(d.read("good", 10).toString(), "hello");
      refused(() => d.read("good", 4), "over the cap");
      refused(() => d.read("link", 100), "symlink");
      refused(() => d.read("fifo", 100), "FIFO (and it does not block)");
      refused(() => d.read("roots", 100), "another owner");
      refused(() => d.read("../secret", 100), "not a plain name");
      refused(() => d.copyOut("good", 4, join(base, "copy"), 0o600), "not the declared size");
    });
    assert.equal(readdirSync(base).includes("copy"), false);
  });

  it("copies out into a new root file of the given mode, owned by root, and removes by name without following", () => {
    own("staged", "release bytes");
    const to = join(base, "copy.new");
    const digest = withPinnedDir(dir, AGENT, (d) => d.copyOut("staged", 13, to, 0o600));
    assert.equal(digest, sha(Buffer.from("release bytes")));
    const st = statSync(to);
    assert.equal(st.uid, 0);
    assert.equal(st.mode & 0o777, 0o600);
    withPinnedDir(dir, AGENT, (d) => {
      d.remove("link");
      d.remove("missing");
    });
    assert.equal(readFileSync(join(base, "secret"), "utf8"), "root only");
  });

  it("refuses a directory that is not the owner's, also when a symlink stands in its place", () => {
    const roots = join(base, "roots-dir");
    mkdirSync(roots);
    const swapped = join(base, "swapped");
    symlinkSync(roots, swapped);
    for (const path of [roots, swapped]) refused(() => withPinnedDir(path, AGENT, () => 1), path);
    assert.equal(process.cwd() !== roots, true);
  });
});

describe("the strace check holds root's units to docs/ota.md's list", () => {
  const rules = documentedRootPaths(readFileSync(join(import.meta.dirname, "..", "..", "docs", "ota.md"), "utf8"));
  const pinned = "AT_FDCWD</var/lib/outpost/update>";

  it("passes what the boundary allows: the pin, O_NOFOLLOW reads and unlinks by name there, root's own writes", () => {
    const trace = [
      'chdir("/var/lib/outpost/update") = 0',
      `statx(${pinned}, ".", AT_STATX_SYNC_AS_STAT, STATX_ALL, {}) = 0`,
      `openat(${pinned}, "install.json", O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC) = 20</var/lib/outpost/update/install.json>`,
      `unlinkat(${pinned}, "${"a".repeat(64)}.ready", 0) = 0`,
      'openat(AT_FDCWD</>, "/opt/outpost/update/trial.json.tmp", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0644) = 3</opt/outpost/update/trial.json.tmp>',
      'renameat2(AT_FDCWD</>, "/opt/outpost/current.new", AT_FDCWD</>, "/opt/outpost/current", 0) = 0',
      'chdir("/") = 0',
    ].join("\n");
    assert.deepEqual(checkTraces([trace], rules), []);
  });

  it("fails what the old units did: writes and chowns by path in the agent's directory, opens that follow links", () => {
    const trace = [
      'openat(AT_FDCWD</>, "/var/lib/outpost/update/rollback-reason.tmp", O_WRONLY|O_CREAT|O_TRUNC, 0666) = 3',
      'fchownat(AT_FDCWD</>, "/var/lib/outpost/update/journal.json.tmp", 995, 995, 0) = 0',
      `openat(${pinned}, "${"b".repeat(64)}.ready", O_RDONLY|O_CLOEXEC) = 3`,
      `renameat2(${pinned}, "x", ${pinned}, "install.json", 0) = 0`,
      'chdir("/etc") = 0',
    ].join("\n");
    const problems = checkTraces([trace], rules);
    assert.equal(problems.length, 6, problems.join("\n"));
    assert.ok(problems.some((p) => /rollback-reason\.tmp: not listed/.test(p)));
    assert.ok(problems.some((p) => /^fchownat .*journal\.json\.tmp: not listed/.test(p)));
    assert.ok(problems.some((p) => /without O_NOFOLLOW/.test(p)));
    assert.ok(problems.some((p) => /^chdir into \/etc/.test(p)));
  });
});

describe("update-apply reads two keys of the configuration", () => {
  it("takes update.trustedKeys and state.dir, opens no file the configuration names, and names a bad key", () => {
    const base = mkdtempSync(join(tmpdir(), "outpost-rootview-"));
    try {
      const path = join(base, "config.yaml");
      // Files that do not exist, and sections it does not validate: the agent's business, not root's.
      writeFileSync(
        path,
        `mqtt: { url: "mqtt://x", passwordFile: /nonexistent/pw, ca: /nonexistent/ca }\nstate: { dir: /srv/outpost }\nupdate: { trustedKeys: ["${keys.publicText}"], trialTimeout: 5m }\nnonsense: 1\n`,
      );
      const view = readRootView(path);
      assert.deepEqual(view.update.trustedKeys, [keys.publicText]);
      assert.equal(view.state.dir, "/srv/outpost");
      writeFileSync(path, "update: { trustedKeys: [nope] }\nstate: { dir: relative }\n");
      assert.throws(
        () => readRootView(path),
        (e) =>
          isOutpostError(e, "CONFIG_INVALID") &&
          /update\.trustedKeys\.0/.test(e.message) &&
          /state\.dir/.test(e.message),
      );
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });
});

describe("the installer's scan for the units marker (real file system)", () => {
  it("finds a marker that spans two read chunks, and nothing where there is none", () => {
    const base = mkdtempSync(join(tmpdir(), "outpost-scan-"));
    try {
      const path = join(base, "binary");
      for (const offset of [0, 4 * 1024 * 1024 - 7, 4 * 1024 * 1024, 9 * 1024 * 1024 + 3]) {
        writeFileSync(path, Buffer.concat([Buffer.alloc(offset, 0x61), Buffer.from(UNITS_MARKER), Buffer.alloc(99)]));
        assert.equal(realFs.scan(path, UNITS_MARKER_PATTERN)?.[1], "2", `marker at ${offset}`);
      }
      writeFileSync(path, Buffer.alloc(5 * 1024 * 1024, 0x62));
      assert.equal(realFs.scan(path, UNITS_MARKER_PATTERN), undefined);
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });
});
