// Issue 13, item 7: a power cut at any point of the install (or of the end of a trial) leaves a runnable
// binary where systemd starts one, and the next run finishes the job. A SIGKILL keeps the page cache and so
// proves nothing about this: the recording file system keeps only what was fsynced (test/helpers/recording-fs.ts).
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { generateKeys, parsePrivateKey } from "../../src/commands/keys.ts";
import { chunk, DEFAULT_CHUNKS } from "../../src/ota/chunks.ts";
import { type ApplyOptions, applyUpdate } from "../../src/ota/install.ts";
import { type Manifest, signManifest } from "../../src/ota/manifest.ts";
import {
  type RequestRecord,
  requestRecordSchema,
  type TrialRecord,
  trialRecordSchema,
} from "../../src/ota/root-record.ts";
import { releaseName, UNITS_MARKER } from "../../src/version.ts";
import { PowerCut, RecordingFs } from "../helpers/recording-fs.ts";

const OPT = "/opt/outpost";
const RECORDS = "/opt/outpost/update";
const STATE = "/var/lib/outpost";
const DROP_IN = "/run/systemd/system/outpost.service.d/trial.conf";
const keys = generateKeys();
const v1 = Buffer.concat([Buffer.from("v1 "), randomBytes(50_000)]);
const v2 = Buffer.concat([Buffer.from(`v2 ${UNITS_MARKER}`), randomBytes(300_000)]);
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");
const V1_NAME = releaseName("1.0.0", sha(v1));
const V2_NAME = releaseName("1.1.0", sha(v2));

const manifest: Manifest = {
  format: 1,
  kind: "agent",
  artifact: "outpost-1.1.0-linux-x64",
  version: "1.1.0",
  target: { os: "linux", arch: "x64" },
  sha256: sha(v2),
  size: v2.length,
  index: { params: DEFAULT_CHUNKS, chunks: chunk(v2).map((c) => [c.size, c.sha256]) },
  allowDowngrade: false,
  created: 1,
};
const signed = signManifest(manifest, parsePrivateKey(keys.privatePem));

function options(fs: RecordingFs, calls: string[][]): ApplyOptions {
  return {
    opt: OPT,
    records: RECORDS,
    stateDir: STATE,
    serviceUid: 999,
    trialDropIn: DROP_IN,
    trustedKeys: [keys.publicText],
    version: "1.0.0",
    arch: "x64",
    now: () => 2,
    systemctl: (args) => calls.push(args),
    log: () => {},
    fs,
  };
}

/** v1 installed and running, v2 staged by the agent with its install request. */
function staged(): RecordingFs {
  return RecordingFs.from({
    [`${OPT}/releases/${V1_NAME}/outpost`]: v1,
    [`${OPT}/current`]: { link: `releases/${V1_NAME}` },
    [`${STATE}/update/${sha(v2)}.ready`]: v2,
    [`${STATE}/update/install.json`]: request(signed),
  });
}

function request(manifest: unknown, id = "req-1"): string {
  return JSON.stringify({ id, manifest, ready: `${sha(v2)}.ready` });
}

/** Root's own record of the trial (never the agent's journal). */
function journal(fs: RecordingFs): TrialRecord | undefined {
  if (!fs.exists(`${RECORDS}/trial.json`)) return undefined;
  return trialRecordSchema.parse(JSON.parse(fs.readFile(`${RECORDS}/trial.json`).toString()));
}

/** Root's answer to the last install request. */
function answer(fs: RecordingFs): RequestRecord | undefined {
  if (!fs.exists(`${RECORDS}/request.json`)) return undefined;
  return requestRecordSchema.parse(JSON.parse(fs.readFile(`${RECORDS}/request.json`).toString()));
}

function trialOf(release: string, request = "req-0"): TrialRecord {
  return {
    state: "trial",
    release,
    from: { name: V1_NAME, version: "1.0.0" },
    to: { name: release, version: "1.1.0" },
    since: 1,
    request,
  };
}

/** What systemd would start, and whether the rollback unit would act if it failed. */
function runnable(fs: RecordingFs): "v1" | "v2 on trial" {
  const current = fs.resolveBinary(`${OPT}/current`, "outpost");
  if (current?.equals(v1)) return "v1";
  assert.ok(current?.equals(v2), `current is neither v1 nor a whole v2 (${current?.length ?? "missing"} bytes)`);
  // v2 runs only on trial, with the way back in place: the journal names it, previous is a whole v1.
  const j = journal(fs);
  assert.equal(j?.state, "trial");
  assert.equal(j?.release, V2_NAME);
  assert.ok(fs.resolveBinary(`${OPT}/previous`, "outpost")?.equals(v1), "previous is not a whole v1");
  return "v2 on trial";
}

describe("power cuts during an install (recording file system: only what was fsynced survives)", () => {
  it("after a cut at every operation: v1, or v2 on trial with v1 behind it; the next run ends on v2 on trial", () => {
    const calls: string[][] = [];
    const full = staged();
    assert.deepEqual(applyUpdate(options(full, calls)), { installed: V2_NAME });
    const total = full.ops;
    assert.equal(runnable(full), "v2 on trial");
    assert.deepEqual(calls.at(-1), ["restart", "--no-block", "outpost.service"]);
    assert.ok(total > 10, `${total} operations`);

    const seen = new Set<string>();
    for (let cutAt = 0; cutAt < total; cutAt++) {
      const fs = staged();
      fs.cutAt = cutAt;
      assert.throws(() => applyUpdate(options(fs, [])), PowerCut, `cut at ${cutAt}`);
      const after = fs.cut();
      const state = runnable(after);
      seen.add(state);
      // The request stays until the install is whole, so the path unit starts the installer again.
      if (state === "v1") assert.ok(after.exists(`${STATE}/update/install.json`), `cut at ${cutAt}: request lost`);
      const again: string[][] = [];
      const result = applyUpdate(options(after, again));
      if (after.exists(`${STATE}/update/install.json`)) assert.fail(`cut at ${cutAt}: request left after the rerun`);
      assert.equal(runnable(after), "v2 on trial", `cut at ${cutAt}: ${JSON.stringify(result)}`);
      assert.ok(!after.exists(`${STATE}/update/${sha(v2)}.ready`));
      // A trial ends with Restart=no in /run: gone with the reboot, written again by the rerun that switches.
      if (state === "v1") assert.ok(after.exists(DROP_IN), `cut at ${cutAt}: v2 would start without trial rules`);
    }
    // Both outcomes happen: the cuts before the switch and after it.
    assert.deepEqual([...seen].sort(), ["v1", "v2 on trial"]);
  });

  it("the end of a committed trial: a cut anywhere keeps v2 current and v1 previous; older releases are pruned", () => {
    const old = releaseName("0.9.0", "ab".repeat(32));
    const committed = () =>
      RecordingFs.from({
        [`${OPT}/releases/${old}/outpost`]: "old",
        [`${OPT}/releases/${V1_NAME}/outpost`]: v1,
        [`${OPT}/releases/${V2_NAME}/outpost`]: v2,
        [`${OPT}/current`]: { link: `releases/${V2_NAME}` },
        [`${OPT}/previous`]: { link: `releases/${V1_NAME}` },
        [DROP_IN]: "[Service]\nRestart=no\n",
        [`${RECORDS}/trial.json`]: JSON.stringify(trialOf(V2_NAME)),
        [`${STATE}/update/commit.request`]: V2_NAME,
      });
    const full = committed();
    const calls: string[][] = [];
    assert.deepEqual(applyUpdate(options(full, calls)), { committed: true });
    assert.deepEqual(calls, [["daemon-reload"]]);
    assert.deepEqual(full.list(`${OPT}/releases`).sort(), [V1_NAME, V2_NAME].sort());
    assert.ok(!full.exists(DROP_IN));
    for (let cutAt = 0; cutAt < full.ops; cutAt++) {
      const fs = committed();
      fs.cutAt = cutAt;
      assert.throws(() => applyUpdate(options(fs, [])), PowerCut);
      const after = fs.cut();
      assert.ok(after.resolveBinary(`${OPT}/current`, "outpost")?.equals(v2));
      assert.ok(after.resolveBinary(`${OPT}/previous`, "outpost")?.equals(v1));
    }
  });

  it("a staged file that is not the signed release is refused: v1 stays, root's record says why, nothing is left", () => {
    for (const [name, tamper, code] of [
      [
        "a flipped byte",
        (b: Buffer) => Buffer.concat([b.subarray(0, 10), Buffer.from([(b[10] ?? 0) ^ 1]), b.subarray(11)]),
        "OTA_HASH_MISMATCH",
      ],
      ["a short file", (b: Buffer) => b.subarray(0, b.length - 1), "OTA_STAGED_INVALID"],
    ] as const) {
      const fs = staged();
      fs.writeFile(`${STATE}/update/${sha(v2)}.ready`, tamper(v2), 0o600);
      const calls: string[][] = [];
      assert.deepEqual(applyUpdate(options(fs, calls)), { refused: code }, name);
      assert.equal(runnable(fs), "v1");
      const a = answer(fs);
      assert.equal(a?.state, "failed");
      assert.equal(a?.code, code);
      assert.equal(a?.request, "req-1");
      assert.ok(!fs.exists(`${STATE}/update/install.json`));
      // Neither the copy nor its directory is left behind.
      assert.ok(!fs.exists(`${OPT}/releases/${V2_NAME}`), name);
      assert.deepEqual(calls, []);
    }
  });

  it("a request the device's own keys do not verify is refused with its code, whatever the agent wrote", () => {
    const stranger = generateKeys();
    const cases: [string, unknown, string][] = [
      ["another key", signManifest(manifest, parsePrivateKey(stranger.privatePem)), "OTA_KEY_UNTRUSTED"],
      [
        "a changed payload",
        { ...signed, payload: signed.payload.replace('"version":"1.1.0"', '"version":"1.2.0"') },
        "OTA_SIGNATURE_INVALID",
      ],
      [
        "an older version",
        signManifest({ ...manifest, version: "0.9.0" }, parsePrivateKey(keys.privatePem)),
        "OTA_DOWNGRADE",
      ],
      [
        "another arch",
        signManifest({ ...manifest, target: { os: "linux", arch: "arm64" } }, parsePrivateKey(keys.privatePem)),
        "OTA_WRONG_ARCH",
      ],
      ["not a manifest", "hello", "OTA_MANIFEST_INVALID"],
    ];
    for (const [name, m, code] of cases) {
      const fs = staged();
      fs.writeFile(`${STATE}/update/install.json`, request(m), 0o600);
      assert.deepEqual(applyUpdate(options(fs, [])), { refused: code }, name);
      assert.equal(runnable(fs), "v1");
      assert.ok(!fs.exists(`${STATE}/update/install.json`));
    }
  });
});
