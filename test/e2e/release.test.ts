// Issue 13 groundwork: a version stamped into the binary that a release host can read without running it, and
// what content-defined chunks save when only the app changes.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, createPublicKey } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, it } from "node:test";
import { generateKeys, parsePrivateKey, publicKeyText } from "../../src/commands/keys.ts";
import { chunk, plan } from "../../src/ota/chunks.ts";
import { chunkIndexSchema, verifyManifest } from "../../src/ota/manifest.ts";
import { releaseMarker } from "../../src/version.ts";
import { AgentProcess, ROOT, sourceCommand } from "../helpers/agent-process.ts";
import { operatorKey } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { Operator } from "../helpers/operator.ts";
import { outcome } from "../helpers/outcome.ts";
import { RangeServer } from "../helpers/range-server.ts";
import { buildVersion } from "../helpers/releases.ts";
import { run } from "../helpers/run.ts";

let out: string;
before(() => {
  out = mkdtempSync(join(tmpdir(), "outpost-release-"));
  // Another version of the same commit: an app-only change, as a release candidate would be.
  buildVersion(out, "0.1.1-rc.1");
});
after(() => rmSync(out, { recursive: true, force: true }));

it("--set-version stamps the binary; the version reads back from its bytes, for either arch", () => {
  const rc = join(out, "outpost-linux-x64");
  assert.match(execFileSync(rc, ["--version"], { encoding: "utf8", env: {} }), /^outpost 0\.1\.1-rc\.1 \(/);
  assert.equal(releaseMarker(readFileSync(rc)), "0.1.1-rc.1");
  const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string };
  assert.equal(releaseMarker(readFileSync(join(ROOT, "dist", "outpost-linux-arm64"))), pkg.version);
  assert.equal(releaseMarker(Buffer.from("no marker here")), undefined);
});

it("an app-only change moves a few MiB of a 120 MiB binary when chunks are content-defined", (t) => {
  const current = readFileSync(join(ROOT, "dist", "outpost-linux-x64"));
  const next = readFileSync(join(out, "outpost-linux-x64"));
  const p = plan(chunk(next), chunk(current));
  const mib = (n: number) => (n / 1024 / 1024).toFixed(2);
  t.diagnostic(`fetch ${mib(p.fetchBytes)} MiB of ${mib(next.length)} MiB (${p.fetch.length} chunks)`);
  assert.equal(p.fetchBytes + p.reusedBytes, next.length);
  assert.ok(p.fetchBytes < 8 * 1024 * 1024, `${mib(p.fetchBytes)} MiB to fetch`);
});

it("outpost release: a signed manifest with version, arch, size, sha256 and a chunk index that rebuilds the file", async () => {
  const ops = generateKeys();
  const stranger = generateKeys();
  writeFileSync(join(out, "release.key"), ops.privatePem, { mode: 0o600 });
  for (const [binary, version, arch, level] of [
    // At the command's default level (17, about 20 s here): the self-update below fetches these chunks.
    [join(out, "outpost-linux-x64"), "0.1.1-rc.1", "x64", []],
    // Made on this x64 host, which cannot run it; at --zstd-level 6, the quick trial's level.
    [join(ROOT, "dist", "outpost-linux-arm64"), "0.1.0", "arm64", ["--zstd-level", "6"]],
  ] as const) {
    const dir = join(out, `release-${arch}`);
    const r = await run(
      [...sourceCommand(), "release", "--binary", binary, "--key", join(out, "release.key"), "--out", dir, ...level],
      // Level 17 on a full binary takes about 20 s alone; a busy machine may take twice that.
      { timeoutMs: 180_000 },
    );
    assert.equal(r.code, 0, r.stderr);
    const signed = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8")) as { payload: string };
    const m = verifyManifest(signed, [ops.publicText]);
    const bytes = readFileSync(binary);
    assert.equal(m.kind, "agent");
    assert.equal(m.version, version);
    assert.deepEqual(m.target, { os: "linux", arch });
    assert.equal(m.size, bytes.length);
    assert.equal(m.sha256, createHash("sha256").update(bytes).digest("hex"));
    assert.equal(m.artifact, `outpost-${version}-linux-${arch}`);
    assert.ok(readFileSync(join(dir, m.artifact)).equals(bytes));
    // The index is too large to ride inline: a file named by its hash, fetched like a chunk.
    assert.ok(!("chunks" in m.index));
    const text = readFileSync(join(dir, `index-${m.index.sha256}.json`), "utf8");
    assert.equal(createHash("sha256").update(text).digest("hex"), m.index.sha256);
    const index = chunkIndexSchema.parse(JSON.parse(text));
    const rebuilt = Buffer.concat(
      index.chunks.reduce<{ at: number; parts: Buffer[] }>(
        (acc, [size, sha]) => {
          const part = bytes.subarray(acc.at, acc.at + size);
          assert.equal(createHash("sha256").update(part).digest("hex"), sha);
          return { at: acc.at + size, parts: [...acc.parts, part] };
        },
        { at: 0, parts: [] },
      ).parts,
    );
    assert.equal(createHash("sha256").update(rebuilt).digest("hex"), m.sha256);
    // Refusals, each with its code: a key not trusted, a payload changed after signing, not a manifest.
    assert.equal(
      outcome(() => verifyManifest(signed, [stranger.publicText])),
      "OTA_KEY_UNTRUSTED",
    );
    const changed = { ...signed, payload: signed.payload.replace(`"version":"${version}"`, '"version":"9.9.9"') };
    assert.notEqual(changed.payload, signed.payload);
    assert.equal(
      outcome(() => verifyManifest(changed, [ops.publicText])),
      "OTA_SIGNATURE_INVALID",
    );
    assert.equal(
      outcome(() => verifyManifest({ payload: "{}" }, [ops.publicText])),
      "OTA_MANIFEST_INVALID",
    );
  }
  const notOurs = await run([
    ...sourceCommand(),
    "release",
    "--binary",
    "/bin/sh",
    "--key",
    join(out, "release.key"),
    "--out",
    join(out, "x"),
  ]);
  assert.equal(notOurs.code, 1);
  assert.match(notOurs.stderr, /not an outpost binary \(no version marker\)/);
});

it("the built x64 agent updates itself to the next build over HTTP: only the chunks it lacks are fetched, and it is staged", async (t) => {
  const signed = JSON.parse(readFileSync(join(out, "release-x64", "manifest.json"), "utf8")) as unknown;
  const releasePub = publicOf(join(out, "release.key"));
  const server = await RangeServer.start(join(out, "release-x64"));
  const broker = await Mosquitto.start();
  const ops = operatorKey();
  const operator = await Operator.open(broker.port, ops);
  const agent = AgentProcess.run([join(ROOT, "dist", "outpost-linux-x64")], {
    device: { id: "dev-self-update" },
    mqtt: { url: broker.url },
    commands: { trustedKeys: [{ name: "ops", key: ops.publicText, allow: ["*"] }] },
    update: { trustedKeys: [releasePub] },
  });
  try {
    await agent.waitForLog("mqtt connected", 20_000);
    // Issue 23 items 5 and 11: on 8ee023c a binary run from dist/ reported "release": "dist", and an update
    // to it downloaded everything and failed two minutes later. It knows at once that nothing would install it.
    const described = (await operator.final("dev-self-update", "describe")).result as {
      modules: { ota: { release: unknown; installer: unknown } };
    };
    assert.deepEqual(described.modules.ota, { ...described.modules.ota, release: null, installer: false });
    const refused = (
      await operator.call(
        "dev-self-update",
        "update",
        { manifest: signed, source: { http: server.url("") } },
        { timeoutMs: 20_000 },
      )
    ).finals[0];
    assert.equal(refused?.error?.code, "OTA_NO_INSTALLER", JSON.stringify(refused));
    assert.match(refused?.error?.message ?? "", /not in a release directory.*--until staged/);
    const call = await operator.call(
      "dev-self-update",
      "update",
      { manifest: signed, source: { http: server.url("") }, until: "staged" },
      { timeoutMs: 60_000 },
    );
    const reply = call.finals[0];
    assert.equal(reply?.state, "succeeded", JSON.stringify(reply?.error));
    const r = reply?.result as {
      state: string;
      version: string;
      size: number;
      fetched: number;
      reused: number;
      resumed: number;
    };
    assert.equal(r.state, "staged");
    assert.equal(r.version, "0.1.1-rc.1");
    const mib = (n: number) => (n / 1024 / 1024).toFixed(2);
    t.diagnostic(`fetched ${mib(r.fetched)} MiB, reused ${mib(r.reused)} MiB of ${mib(r.size)} MiB`);
    // The chunk index (about 150 KB) comes on top of the chunks.
    assert.ok(server.sent < 8 * 1024 * 1024, `${mib(server.sent)} MiB served`);
    // "resumed": chunks already right in the new, zero-filled partial file (the binary's runs of zero bytes).
    assert.equal(r.fetched + r.reused + r.resumed, r.size);
  } finally {
    await agent.cleanup();
    await operator.close();
    await broker.stop();
    await server.stop();
  }
});

function publicOf(keyFile: string): string {
  return publicKeyText(createPublicKey(parsePrivateKey(readFileSync(keyFile, "utf8"))));
}
