// Issue 13, item 3: the MQTT transport. `outpost ctl update` sends the release and serves its chunks over the
// broker; a transfer whose server goes away halfway resumes from the partial file when it is served again.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { progressLine } from "../../src/cli/ctl-update.ts";
import { generateKeys, parsePrivateKey } from "../../src/commands/keys.ts";
import { makeRelease } from "../../src/ota/release.ts";
import { VERSION } from "../../src/version.ts";
import { AgentProcess, sourceCommand } from "../helpers/agent-process.ts";
import { operatorKey } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { type Received, Watch } from "../helpers/mqtt-watch.ts";
import { PREFIX } from "../helpers/operator.ts";
import { pinAgent } from "../helpers/pins.ts";
import { fakeAgent } from "../helpers/releases.ts";

const SIZE = 12 * 1024 * 1024;

describe("updates over MQTT, served by outpost ctl update", () => {
  const ops = operatorKey();
  const releaseKey = generateKeys();
  let broker: Mosquitto;
  let watch: Watch;
  let dir: string;
  const agents: AgentProcess[] = [];

  function release(name: string, version: string): string {
    const file = join(dir, `${name}.bin`);
    writeFileSync(file, fakeAgent(version, process.arch === "arm64" ? "arm64" : "x64", SIZE));
    const out = join(dir, name);
    makeRelease({ file, privateKey: parsePrivateKey(releaseKey.privatePem), out, kind: "agent", now: 1 });
    return out;
  }

  const pins = () => join(dir, "known_devices");

  function agent(id: string): AgentProcess {
    const a = AgentProcess.run(sourceCommand(), {
      device: { id, groups: ["line-3"] },
      mqtt: { url: broker.url, reconnectMin: "50ms", reconnectMax: "500ms" },
      commands: { trustedKeys: [{ name: "ops", key: ops.publicText, allow: ["*"] }] },
      update: { trustedKeys: [releaseKey.publicText], maxSize: "16MiB", progressInterval: "100ms", rangeTimeout: "1s" },
    });
    agents.push(a);
    return a;
  }

  function ctl(args: string[]): {
    child: ChildProcess;
    done: Promise<{ code: number | null; out: string; err: string }>;
  } {
    const child = spawn(
      sourceCommand()[0] ?? "",
      [
        ...sourceCommand().slice(1),
        "ctl",
        "update",
        ...args,
        "--broker",
        broker.url,
        "--key",
        join(dir, "ops.key"),
        "--known-devices",
        pins(),
        "--json",
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let out = "";
    let err = "";
    child.stdout?.on("data", (c: Buffer) => {
      out += c.toString();
    });
    child.stderr?.on("data", (c: Buffer) => {
      err += c.toString();
    });
    const done = new Promise<{ code: number | null; out: string; err: string }>((resolve) =>
      child.on("exit", (code) => resolve({ code, out, err })),
    );
    return { child, done };
  }

  const lines = (out: string) =>
    out
      .trim()
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "outpost-ota-mqtt-"));
    writeFileSync(join(dir, "ops.key"), ops.privatePem, { mode: 0o600 });
    broker = await Mosquitto.start();
    watch = await Watch.open(broker.port, [`${PREFIX}/+/update`]);
  });
  after(async () => {
    for (const a of agents) await a.cleanup();
    await watch.close();
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("stages a release on a group of two, each fetching every chunk over MQTT, with progress per device", async () => {
    const a = agent("dev-m1");
    const b = agent("dev-m2");
    await Promise.all([a.waitForLog("mqtt connected"), b.waitForLog("mqtt connected")]);
    await pinAgent(pins(), broker.url, "dev-m1", a);
    await pinAgent(pins(), broker.url, "dev-m2", b);
    const dirRelease = release("r1", bump(VERSION, 1));
    const r = await ctl(["--group", "line-3", "--expect", "2", dirRelease, "--until", "staged"]).done;
    assert.equal(r.code, 0, r.err + r.out);
    const outcomes = lines(r.out).filter((l) => "outcome" in l);
    assert.deepEqual(outcomes.map((l) => [l.device, l.outcome]).sort(), [
      ["dev-m1", "staged"],
      ["dev-m2", "staged"],
    ]);
    // From a checkout there is no running binary to reuse: the whole file (and its index) went over MQTT.
    for (const o of outcomes) assert.ok(Number(o.served) > SIZE, `${o.device}: ${o.served} bytes served`);
    const bin = readFileSync(join(dir, "r1.bin"));
    for (const x of [a, b]) {
      const staged = join(x.dir, "state", "update", `${createHash("sha256").update(bin).digest("hex")}.ready`);
      assert.ok(existsSync(staged) && readFileSync(staged).equals(bin));
    }
    assert.ok(
      lines(r.out).some((l) => l.state === "downloading"),
      "progress lines",
    );
  });

  it("a transfer cut at half resumes when served again: the second run sends only the rest", async () => {
    const c = agent("dev-m3");
    await c.waitForLog("mqtt connected");
    await pinAgent(pins(), broker.url, "dev-m3", c);
    const dirRelease = release("r2", bump(VERSION, 2));
    const first = ctl(["dev-m3", dirRelease, "--until", "staged"]);
    const half = (m: Received) =>
      m.topic === `${PREFIX}/dev-m3/update` && m.json.state === "downloading" && Number(m.json.done) >= SIZE / 2;
    await watch.waitFor(half, 30_000, "half of the download");
    first.child.kill("SIGKILL");
    await first.done;
    // Nobody answers: the device gives up after its range timeout and retries, keeping what it has.
    const failed = await watch.waitForNext(
      (m) => m.topic === `${PREFIX}/dev-m3/update` && m.json.state === "failed",
      30_000,
      "the cut download fails",
    );
    assert.equal(failed.json.code, "OTA_DOWNLOAD_FAILED");
    const second = await ctl(["dev-m3", dirRelease, "--until", "staged"]).done;
    assert.equal(second.code, 0, second.err + second.out);
    const outcome = lines(second.out).find((l) => "outcome" in l);
    assert.equal(outcome?.outcome, "staged");
    const staged = lines(second.out).findLast((l) => l.state === "staged");
    assert.ok(Number(staged?.resumed) >= SIZE / 2, `resumed ${staged?.resumed}`);
    assert.ok(Number(outcome?.served) < SIZE / 2 + 2 * 1024 * 1024, `served again: ${outcome?.served}`);
  });

  it("draws one progress line per device: a bar while downloading, the outcome after", () => {
    assert.equal(
      progressLine(
        { device: "pi-3", state: "downloading", done: 3 * 1024 * 1024, size: 12 * 1024 * 1024, served: 0 },
        8,
      ),
      "pi-3             [##------]  25%  3.0/12.0 MiB",
    );
    assert.equal(
      progressLine({ device: "pi-3", state: "committed", version: "1.2.0", from: "1.1.0", fetched: 524288, served: 0 }),
      "pi-3             committed  1.2.0 (from 1.1.0), fetched 0.5 MiB",
    );
    assert.equal(
      progressLine({
        device: "pi-3",
        state: "rolled-back",
        version: "1.2.0",
        reason: "not healthy within 2m",
        served: 0,
      }),
      "pi-3             rolled-back  1.2.0: not healthy within 2m",
    );
  });
});

function bump(version: string, by: number): string {
  const [major = "0", minor = "0", patch = "0"] = (version.split("-")[0] ?? "").split(".");
  return `${major}.${minor}.${Number(patch) + by}`;
}
