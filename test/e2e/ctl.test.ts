import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import mqtt from "mqtt";
import { fingerprintOf } from "../../src/commands/keys.ts";
import { AgentProcess, ROOT } from "../helpers/agent-process.ts";
import { PREFIX } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { type Received, Watch } from "../helpers/mqtt-watch.ts";
import { demoTasks } from "../helpers/parts-model.ts";
import { type Ran, run } from "../helpers/run.ts";

const BIN = join(ROOT, "dist", "outpost-linux-x64");

/** Runs the built binary to completion. */
function outpost(args: string[], env: Record<string, string> = {}, input?: string): Promise<Ran> {
  return run([BIN, ...args], { env: { PATH: process.env.PATH ?? "", ...env }, ...(input ? { input } : {}) });
}

const online = (id: string) => (m: Received) => m.topic === `${PREFIX}/${id}/status` && m.json.state === "online";

describe("outpost ctl and keygen, the built x64 binary against a real mosquitto", () => {
  let broker: Mosquitto;
  let watch: Watch;
  let dir: string;
  let agent: AgentProcess;
  let config: Record<string, unknown>;
  let call: (device: string, command: string, params?: unknown, extra?: string[]) => Promise<Ran>;

  before(async () => {
    assert.ok(existsSync(BIN), `${BIN} is missing: run npm run build first`);
    broker = await Mosquitto.start();
    watch = await Watch.open(broker.port, [`${PREFIX}/#`]);
    dir = mkdtempSync(join(tmpdir(), "outpost-ctl-"));
    const keygen = await outpost(["keygen", "--out", join(dir, "ops")]);
    assert.equal(keygen.code, 0, keygen.stderr);
    const pub = readFileSync(join(dir, "ops.pub"), "utf8").trim();
    config = {
      device: { id: "dev-e2e", groups: ["e2e-line"] },
      mqtt: { url: `mqtt://127.0.0.1:${broker.port}` },
      telemetry: { interval: "500ms", fullInterval: "50ms" },
      commands: { trustedKeys: [{ name: "ops", key: pub, allow: ["*"] }] },
      tasks: { workers: 1, define: { parts: demoTasks().parts } },
    };
    agent = AgentProcess.run([BIN], config);
    await watch.waitFor(online("dev-e2e"), 20_000, "dev-e2e online");
    // Broker and key from the environment, as an operator's shell profile would set them.
    const env = {
      OUTPOST_CTL_BROKER: `mqtt://127.0.0.1:${broker.port}`,
      OUTPOST_CTL_KEY: join(dir, "ops.key"),
      OUTPOST_CTL_KNOWN_DEVICES: join(dir, "known_devices"),
    };
    // Pinned as an operator pins it: the fingerprint install prints (from device.pub), checked against the status.
    const devicePub = readFileSync(join(agent.dir, "state", "device.pub"), "utf8").trim();
    const pinned = await outpost(["ctl", "trust", "dev-e2e", fingerprintOf(devicePub)], env);
    assert.equal(pinned.code, 0, pinned.stderr);
    call = (device, command, params, extra = []) =>
      outpost(
        [
          "ctl",
          "call",
          device,
          command,
          ...(params === undefined ? [] : ["--params", JSON.stringify(params)]),
          ...extra,
        ],
        env,
      );
  });
  after(async () => {
    await agent.cleanup();
    await watch.close();
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("keygen writes a private key only its owner can read and a one-line public key", () => {
    assert.equal(statSync(join(dir, "ops.key")).mode & 0o777, 0o600);
    assert.match(readFileSync(join(dir, "ops.pub"), "utf8"), /^ed25519:[A-Za-z0-9+/]{43}=\n$/);
  });

  it("task.run with tensors larger than one shell argument: --params @FILE and --params -", async () => {
    // 40 images of 64x64 float32: 874 KB of JSON, far past the 128 KiB a single argument may have.
    const values = new Float32Array(40 * 64 * 64).map((_, i) => (i % 97) / 97);
    const params = {
      task: "parts",
      input: {
        feeds: {
          image: { type: "float32", dims: [40, 1, 64, 64], base64: Buffer.from(values.buffer).toString("base64") },
        },
      },
    };
    const text = JSON.stringify(params);
    assert.ok(text.length > 128 * 1024);
    const file = join(dir, "params.json");
    writeFileSync(file, text);
    const env = {
      OUTPOST_CTL_BROKER: `mqtt://127.0.0.1:${broker.port}`,
      OUTPOST_CTL_KEY: join(dir, "ops.key"),
      OUTPOST_CTL_KNOWN_DEVICES: join(dir, "known_devices"),
    };
    const fromFile = await outpost(
      ["ctl", "call", "dev-e2e", "task.run", "--params", `@${file}`, "--timeout", "30s"],
      env,
    );
    assert.equal(fromFile.code, 0, fromFile.stderr);
    const a = JSON.parse(fromFile.stdout) as { outputs: { scores: { dims: number[] } } };
    assert.deepEqual(a.outputs.scores.dims, [40, 3]);
    const fromStdin = await outpost(
      ["ctl", "call", "dev-e2e", "task.run", "--params", "-", "--timeout", "30s"],
      env,
      text,
    );
    assert.equal(fromStdin.code, 0, fromStdin.stderr);
    assert.deepEqual(
      (JSON.parse(fromStdin.stdout) as typeof a).outputs.scores,
      a.outputs.scores,
      "the same tensors give the same scores",
    );
    const missing = await outpost(
      ["ctl", "call", "dev-e2e", "task.run", "--params", `@${join(dir, "nope.json")}`],
      env,
    );
    assert.equal(missing.code, 64);
    assert.match(missing.stderr, /--params @.*nope\.json: ENOENT/);
  });

  it("ctl devices lists a thousand devices whole, to a parent whose pipe is a socket", async () => {
    // Exiting right after the last write cut the output at what the socket took (172 of 1,000 listed).
    const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${broker.port}`);
    try {
      for (let i = 0; i < 1000; i++) {
        const device = `d-${String(i).padStart(4, "0")}`;
        const status = { state: "online", device, version: "1.0.0", ts: Date.now(), note: "x".repeat(40) };
        await client.publishAsync(`many/v1/${device}/status`, JSON.stringify(status), { qos: 1, retain: true });
      }
    } finally {
      await client.endAsync();
    }
    const r = await outpost(["ctl", "devices", "--prefix", "many/v1", "--broker", `mqtt://127.0.0.1:${broker.port}`]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(
      r.stdout
        .trim()
        .split("\n")
        .filter((l) => l.startsWith("d-")).length,
      1000,
    );
  });

  it("ping", async () => {
    const r = await call("dev-e2e", "ping");
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { pong: true });
  });

  it("describe", async () => {
    const r = await call("dev-e2e", "describe");
    assert.equal(r.code, 0, r.stderr);
    const d = JSON.parse(r.stdout);
    assert.equal(d.device, "dev-e2e");
    assert.equal(d.arch, "x64");
    assert.match(d.version, /^\d+\.\d+\.\d+/);
    assert.ok(d.capabilities.commands.includes("restart"));
    assert.equal(d.config.version, 1);
    assert.match(d.config.hash, /^[0-9a-f]{64}$/);
    assert.ok(d.uptime.agentMs > 0);
  });

  it("telemetry.now", async () => {
    const r = await call("dev-e2e", "telemetry.now");
    assert.equal(r.code, 0, r.stderr);
    const t = JSON.parse(r.stdout);
    assert.equal(typeof t.metrics.cpu.load, "number");
    assert.equal(typeof t.metrics.memory.total, "number");
  });

  it("config.get, with and without a path", async () => {
    const all = await call("dev-e2e", "config.get");
    assert.equal(all.code, 0, all.stderr);
    assert.equal(JSON.parse(all.stdout).config.device.id, "dev-e2e");
    const one = await call("dev-e2e", "config.get", { path: "telemetry.interval" });
    assert.equal(JSON.parse(one.stdout).value, "500ms");
  });

  it("config.set applies, reports restart-only keys, and refuses bad params naming the path", async () => {
    const r = await call("dev-e2e", "config.set", {
      patch: { telemetry: { interval: "2s", fullInterval: "50ms" }, outbox: { window: 16 } },
    });
    assert.equal(r.code, 0, r.stderr);
    const set = JSON.parse(r.stdout);
    assert.deepEqual(set.changed, ["outbox.window", "telemetry.interval"]);
    assert.deepEqual(set.restartRequired, ["outbox.window"]);
    const bad = await call("dev-e2e", "config.set", { patch: { telemetry: { interval: "fast" } } });
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /dev-e2e: BAD_PARAMS: params\.patch\.telemetry\.interval: expected a duration/);
    const after = await call("dev-e2e", "config.get", { path: "telemetry.interval" });
    assert.equal(JSON.parse(after.stdout).value, "2s");
  });

  it("log.level, and BAD_PARAMS for a level that does not exist", async () => {
    const r = await call("dev-e2e", "log.level", { level: "debug" });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { previous: "info", level: "debug" });
    await agent.waitForLog("telemetry sampled", 10_000);
    const bad = await call("dev-e2e", "log.level", { level: "loud" });
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /BAD_PARAMS: params\.level/);
  });

  it("a group call: published once to the group, each member's answer on its own line", async () => {
    const r = await call("e2e-line", "ping", undefined, ["--group", "--expect", "1"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'dev-e2e  succeeded  {"pong":true}\n');
  });

  it("an unknown command and a missing device fail with their code and exit 1", async () => {
    const unknown = await call("dev-e2e", "self-destruct");
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /UNKNOWN_COMMAND/);
    // Issue 10: a device that never connected is named at once (it used to wait out the timeout).
    const nobody = await call("dev-nobody", "ping", undefined, ["--timeout", "20s"]);
    assert.equal(nobody.code, 1);
    assert.match(nobody.stderr, /no device dev-nobody has a retained status/);
    const waited = await call("dev-nobody", "ping", undefined, ["--timeout", "500ms", "--wait"]);
    assert.equal(waited.code, 1);
    assert.match(waited.stderr, /TIMEOUT: no reply from dev-nobody/);
  });

  it("ctl devices lists the device from its retained status; ctl watch shows its telemetry", async () => {
    const env = {
      OUTPOST_CTL_BROKER: `mqtt://127.0.0.1:${broker.port}`,
      OUTPOST_CTL_KNOWN_DEVICES: join(dir, "known_devices"),
    };
    const list = await outpost(["ctl", "devices", "--json", "--wait", "300ms"], env);
    assert.equal(list.code, 0, list.stderr);
    const rows = list.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    assert.deepEqual(
      rows.map((r) => [r.id, r.state, r.key]),
      [["dev-e2e", "online", "pinned"]],
    );
    const watched = await outpost(["ctl", "watch", "dev-e2e", "--count", "2"], env);
    assert.equal(watched.code, 0, watched.stderr);
    assert.match(watched.stdout, /telemetry dev-e2e seq=\d+ cpu=/);
  });

  // Issue 9 item 7: the final reply is the real outcome, sent by the process that came back (here the test
  // starts it again, as systemd's Restart=on-failure would).
  it("restart: the agent drains and exits 75; ctl gets succeeded once the agent is back", async () => {
    const calling = call("dev-e2e", "restart", { delay: 0 }, ["--timeout", "30s"]);
    const exit = await agent.exited;
    assert.equal(exit.code, 75);
    const offline = watch.items.find((m) => m.topic === `${PREFIX}/dev-e2e/status` && m.json.state === "offline");
    assert.ok(offline, "offline published before the exit");
    agent = AgentProcess.run([BIN], config, {}, agent.dir);
    const r = await calling;
    assert.equal(r.code, 0, r.stderr);
    const result = JSON.parse(r.stdout) as { restarted: boolean; previousSession: string; session: string };
    assert.equal(result.restarted, true);
    assert.equal(result.previousSession, offline.json.session);
    assert.notEqual(result.session, result.previousSession);
  });
});
