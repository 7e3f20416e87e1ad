// Issue 13 groundwork: the update command's checks before any download, and a release staged from HTTP.

import assert from "node:assert/strict";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { zstdCompressSync } from "node:zlib";
import { generateKeys, parsePrivateKey } from "../../src/commands/keys.ts";
import { signManifest } from "../../src/ota/manifest.ts";
import { makeRelease } from "../../src/ota/release.ts";
import { VERSION } from "../../src/version.ts";
import { AgentProcess, sourceCommand } from "../helpers/agent-process.ts";
import { operatorKey } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { Watch } from "../helpers/mqtt-watch.ts";
import { Operator, PREFIX } from "../helpers/operator.ts";
import { RangeServer } from "../helpers/range-server.ts";
import { fakeAgent } from "../helpers/releases.ts";
import { tempDir } from "../helpers/temp.ts";

describe("the update command", () => {
  const ops = operatorKey();
  const release = generateKeys();
  const stranger = generateKeys();
  const ID = "dev-ota";
  let broker: Mosquitto;
  let watch: Watch;
  let operator: Operator;
  let agent: AgentProcess;
  let server: RangeServer;
  let dir: string;
  const releases = new Map<string, { signed: unknown; url: string }>();

  function publish(name: string, version: string, arch: "x64" | "arm64", size: number, extra = {}) {
    const file = join(dir, `${name}.bin`);
    writeFileSync(file, fakeAgent(version, arch, size));
    const r = makeRelease({
      file,
      privateKey: parsePrivateKey(release.privatePem),
      out: join(dir, "www", name),
      kind: "agent",
      now: 1,
      ...extra,
    });
    releases.set(name, { signed: r.signed, url: server.url(`${name}/`) });
    return r;
  }

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "outpost-ota-"));
    server = await RangeServer.start(join(dir, "www"));
    broker = await Mosquitto.start();
    watch = await Watch.open(broker.port, [`${PREFIX}/${ID}/update`]);
    operator = await Operator.open(broker.port, ops);
    agent = AgentProcess.run(sourceCommand(), {
      device: { id: ID },
      mqtt: { url: broker.url, reconnectMin: "50ms", reconnectMax: "500ms" },
      commands: { trustedKeys: [{ name: "ops", key: ops.publicText, allow: ["*"] }] },
      update: { trustedKeys: [release.publicText], maxSize: "16MiB", progressInterval: "100ms" },
    });
    await agent.waitForLog("mqtt connected");
  });
  after(async () => {
    await agent.cleanup();
    await operator.close();
    await watch.close();
    await broker.stop();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  // An agent run from a checkout has no installer: it stages, and only when asked for no more (ctl's --until staged).
  const update = (name: string, manifest?: unknown, until: "staged" | null = "staged") => {
    const r = releases.get(name);
    assert.ok(r);
    return operator.call(
      ID,
      "update",
      { manifest: manifest ?? r.signed, source: { http: r.url }, ...(until ? { until } : {}) },
      { timeoutMs: 20_000 },
    );
  };

  it("refuses before downloading anything: each check with its own code", async () => {
    const newer = bumped(VERSION);
    publish("arm", newer, "arm64", 100_000);
    publish("old", "0.0.1", process.arch === "x64" ? "x64" : "arm64", 100_000);
    publish("same", VERSION, process.arch === "x64" ? "x64" : "arm64", 100_000);
    publish("big", newer, process.arch === "x64" ? "x64" : "arm64", 17 * 1024 * 1024);
    publish("later", newer, process.arch === "x64" ? "x64" : "arm64", 100_000, { minVersion: "99.0.0" });
    // Large enough that its chunk index is a file beside it, fetched and checked like a chunk.
    const good = publish("good", newer, process.arch === "x64" ? "x64" : "arm64", 15 * 1024 * 1024);
    assert.ok(!("chunks" in good.manifest.index));
    const foreign = signManifest(good.manifest, parsePrivateKey(stranger.privatePem));
    const changed = {
      ...(good.signed as { payload: string }),
      payload: good.signed.payload.replace('"size":', '"size": '),
    };
    const cases: [string, unknown, string][] = [
      ["good", foreign, "OTA_KEY_UNTRUSTED"],
      ["good", changed, "OTA_SIGNATURE_INVALID"],
      ["arm", undefined, "OTA_WRONG_ARCH"],
      ["old", undefined, "OTA_DOWNGRADE"],
      ["same", undefined, "OTA_DOWNGRADE"],
      ["big", undefined, "OTA_TOO_LARGE"],
      ["later", undefined, "OTA_TOO_OLD"],
    ];
    for (const [name, manifest, code] of cases) {
      const reply = (await update(name, manifest)).finals[0];
      assert.equal(reply?.state, "failed", name);
      assert.equal(reply?.error?.code, code, `${name}: ${reply?.error?.message}`);
    }
    assert.equal(server.sent, 0, "nothing was downloaded");
    // Each refusal is the update's state, a dashboard sees the last one.
    await watch.waitFor((m) => m.json.code === "OTA_TOO_OLD", 5000, "the last refusal's state");
    assert.deepEqual(
      watch.items.filter((m) => m.json.state === "failed").map((m) => m.json.code),
      cases.map(([, , code]) => code),
    );
  });

  it("a chunk index that does not match its hash is refused, and nothing is staged", async () => {
    const arch = process.arch === "x64" ? "x64" : "arm64";
    const r = publish("badindex", bumped(VERSION), arch, 15 * 1024 * 1024);
    assert.ok(!("chunks" in r.manifest.index));
    const file = join(dir, "www", "badindex", `index-${r.manifest.index.sha256}.json`);
    writeFileSync(file, readFileSync(file, "utf8").replace(/"[0-9a-f]{64}"/, `"${"0".repeat(64)}"`));
    const reply = (await update("badindex")).finals[0];
    assert.equal(reply?.error?.code, "OTA_CHUNK_CORRUPT", reply?.error?.message);
    assert.ok(!existsSync(join(agent.dir, "state", "update", `${r.manifest.sha256}.ready`)));
  });

  it("a chunk that fails its hash leaves no partial file behind (issue 22, item 3)", async () => {
    const arch = process.arch === "x64" ? "x64" : "arm64";
    const r = publish("corrupt", bumped(VERSION), arch, 15 * 1024 * 1024);
    const artifact = join(dir, "www", "corrupt", r.manifest.artifact);
    const bytes = readFileSync(artifact);
    bytes[bytes.length - 100] = (bytes[bytes.length - 100] ?? 0) ^ 1; // the last chunk: the others were written
    writeFileSync(artifact, bytes);
    // Served as ranges of the artifact: without the compressed chunks (a server that has only the artifact).
    const chunks = join(dir, "www", "corrupt", "chunks");
    const packed = new Map(readdirSync(chunks).map((f) => [f, readFileSync(join(chunks, f))]));
    rmSync(chunks, { recursive: true });
    const reply = (await update("corrupt")).finals[0];
    assert.equal(reply?.error?.code, "OTA_CHUNK_CORRUPT", reply?.error?.message);
    const left = () => readdirSync(join(agent.dir, "state", "update")).filter((n) => n.startsWith(r.manifest.sha256));
    assert.deepEqual(left(), []);
    // Issue 27: served as compressed chunks too, the last one a zstd bomb (256 MiB of zeros in 8 KiB, smaller
    // than the chunk), and the artifact whole again: the bomb is decompressed no further than the chunk's size,
    // that chunk comes as a range of the artifact instead, and the release is staged.
    mkdirSync(chunks);
    for (const [f, b] of packed) writeFileSync(join(chunks, f), b);
    bytes[bytes.length - 100] = (bytes[bytes.length - 100] ?? 0) ^ 1;
    writeFileSync(artifact, bytes);
    const index = (
      "chunks" in r.manifest.index
        ? r.manifest.index
        : JSON.parse(readFileSync(join(dir, "www", "corrupt", `index-${r.manifest.index.sha256}.json`), "utf8"))
    ) as { chunks: [number, string][] };
    const last = index.chunks.at(-1)?.[1];
    writeFileSync(join(chunks, `${last}.zst`), zstdCompressSync(Buffer.alloc(256 * 1024 * 1024)));
    const bomb = (await update("corrupt")).finals[0];
    assert.equal(bomb?.state, "succeeded", JSON.stringify(bomb?.error));
    assert.equal((bomb?.result as { state?: string } | undefined)?.state, "staged");
  });

  it("a start removes a staged release no request names, and every partial but the newest under a day old", async () => {
    const home = tempDir("outpost-agent-");
    const staging = join(home, "state", "update");
    mkdirSync(staging, { recursive: true });
    const name = (c: string, ext: string) => `${c.repeat(64)}.${ext}`;
    writeFileSync(join(staging, name("a", "ready")), "a staged release nobody took");
    const now = Date.now() / 1000;
    for (const [c, ageHours] of [
      ["b", 48],
      ["c", 2],
      ["d", 1],
    ] as const) {
      writeFileSync(join(staging, name(c, "partial")), "part of a download");
      utimesSync(join(staging, name(c, "partial")), now - ageHours * 3600, now - ageHours * 3600);
    }
    const other = AgentProcess.run(
      sourceCommand(),
      { device: { id: "dev-ota-leftovers" }, mqtt: { url: broker.url } },
      {},
      home,
    );
    try {
      await other.waitForLog("mqtt connected");
      assert.deepEqual(readdirSync(staging).sort(), [name("d", "partial")]);
    } finally {
      await other.cleanup();
    }
  });

  it("a release is fetched over HTTP, verified and staged; its progress and outcome are retained on P/D/update", async () => {
    server.sent = 0;
    const reply = (await update("good")).finals[0];
    assert.equal(reply?.state, "succeeded", JSON.stringify(reply?.error));
    const result = reply?.result as { state: string; sha256: string; fetched: number; size: number };
    assert.equal(result.state, "staged");
    const staged = join(agent.dir, "state", "update", `${result.sha256}.ready`);
    assert.ok(existsSync(staged));
    assert.ok(readFileSync(staged).equals(readFileSync(join(dir, "good.bin"))));
    // From a checkout there is no running binary to take chunks from: everything is fetched.
    assert.equal(result.fetched, result.size);
    // Its index and its compressed chunks (issue 27; these bytes are hashes, which do not compress), each once.
    const www = join(dir, "www", "good");
    const files = readdirSync(www).filter((f) => f.startsWith("index-"));
    const chunkFiles = readdirSync(join(www, "chunks")).map((f) => join(www, "chunks", f));
    const expected = [...files.map((f) => join(www, f)), ...chunkFiles].reduce((n, f) => n + statSync(f).size, 0);
    assert.equal(server.sent, expected, `${server.sent} bytes served`);
    const late = await Watch.open(broker.port, [`${PREFIX}/${ID}/update`]);
    try {
      const retained = await late.waitFor(() => true, 5000, "retained update state");
      assert.equal(retained.retain, true);
      assert.equal(retained.json.state, "staged");
      assert.equal(retained.json.sha256, result.sha256);
    } finally {
      await late.close();
    }
    assert.ok(
      watch.items.some((m) => m.json.state === "downloading"),
      "progress was published",
    );
  });

  // Issue 23 item 5: on 8ee023c an agent without the installer downloaded the whole release, showed `staged`,
  // and failed two minutes later with OTA_INSTALL_FAILED, naming nothing the operator could do.
  it("without the installer, refuses an update that is to be installed before downloading anything", async () => {
    server.sent = 0;
    const from = watch.items.length;
    const reply = (await update("good", undefined, null)).finals[0];
    assert.equal(reply?.state, "failed");
    assert.equal(reply?.error?.code, "OTA_NO_INSTALLER");
    assert.match(reply?.error?.message ?? "", /--until staged/);
    assert.equal(server.sent, 0);
    assert.ok(!watch.items.slice(from).some((m) => m.json.state === "downloading"));
    const described = (await operator.final(ID, "describe")).result as { modules: { ota: Record<string, unknown> } };
    assert.equal(described.modules.ota.installer, false);
    assert.equal(described.modules.ota.release, null);
  });

  // Found by the review of issue 23: without the installer nothing removed a staged release, so each
  // `--until staged` of another release kept one more full-size file in state.dir until the next start.
  it("without the installer, staging another release keeps only the newest staged file", async () => {
    const arch = process.arch === "x64" ? "x64" : "arm64";
    publish("second", bumped(bumped(VERSION)), arch, 100_000);
    const r = publish("third", bumped(bumped(bumped(VERSION))), arch, 100_000);
    for (const name of ["second", "third"]) {
      const reply = (await update(name)).finals[0];
      assert.equal(reply?.state, "succeeded", JSON.stringify(reply?.error));
    }
    const ready = readdirSync(join(agent.dir, "state", "update")).filter((n) => n.endsWith(".ready"));
    assert.deepEqual(ready, [`${r.manifest.sha256}.ready`]);
  });
});

function bumped(version: string): string {
  const [major = "0", minor = "0", patch = "0"] = (version.split("-")[0] ?? "").split(".");
  return `${major}.${minor}.${Number(patch) + 1}`;
}
