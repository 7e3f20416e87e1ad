// Issue 13, item 8: the same signed manifests deploy a task's model. It is verified, switched beside the
// previous model, checked with the task's golden sample and kept, or dropped with the previous model kept.
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { after, before, describe, it } from "node:test";
import { generateKeys, parsePrivateKey } from "../../src/commands/keys.ts";
import { makeRelease } from "../../src/ota/release.ts";
import { AgentProcess, sourceCommand } from "../helpers/agent-process.ts";
import { runCli } from "../helpers/cli.ts";
import { operatorKey } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { Operator } from "../helpers/operator.ts";
import { DEMO, FIXTURES, MODEL, sample } from "../helpers/parts-model.ts";
import { pinAgent } from "../helpers/pins.ts";
import { RangeServer } from "../helpers/range-server.ts";

const ID = "dev-models";

/** One classifier on the demo model, whose golden sample (a chipped part) is expected to say `label`. */
/** An agent from source that takes commands from `ops` and model releases signed by `releaseKey`, connected. */
async function modelAgent(
  id: string,
  broker: Mosquitto,
  ops: ReturnType<typeof operatorKey>,
  releaseKey: string,
  tasks: Record<string, unknown>,
): Promise<AgentProcess> {
  const agent = AgentProcess.run(sourceCommand(), {
    device: { id },
    mqtt: { url: broker.url },
    commands: { trustedKeys: [{ name: "ops", key: ops.publicText, allow: ["*"] }] },
    update: { trustedKeys: [releaseKey] },
    tasks,
  });
  await agent.waitForLog("mqtt connected");
  return agent;
}

const inspecting = (label: string) => ({
  workers: 1,
  define: {
    inspect: {
      type: "classify-image",
      model: MODEL,
      labels: FIXTURES.labels,
      input: { width: 64, height: 64, channels: 1 },
      pass: { labels: ["good"] },
      golden: { image: join(DEMO, "samples", "chip-1.png"), label },
    },
  },
});

describe("model updates: a task's model, tried with its golden sample", () => {
  const ops = operatorKey();
  const releaseKey = generateKeys();
  let broker: Mosquitto;
  let operator: Operator;
  let agent: AgentProcess;
  let server: RangeServer;
  let dir: string;
  const signed = new Map<string, unknown>();

  function release(name: string, version: string, bytes: Buffer): void {
    const file = join(dir, `${name}.onnx`);
    writeFileSync(file, bytes);
    const r = makeRelease({
      file,
      privateKey: parsePrivateKey(releaseKey.privatePem),
      out: join(dir, "www", name),
      kind: "model",
      version,
      now: 1,
    });
    signed.set(name, r.signed);
  }

  const update = async (name: string, task: string | null = "inspect") => {
    const call = await operator.call(
      ID,
      "update",
      { manifest: signed.get(name), source: { http: server.url(`${name}/`) }, ...(task ? { task } : {}) },
      { timeoutMs: 60_000 },
    );
    return call.finals[0];
  };

  const classify = async (image: string) => {
    const call = await operator.call(
      ID,
      "task.run",
      { task: "inspect", input: { image: sample(image).toString("base64") } },
      { timeoutMs: 30_000 },
    );
    return call.finals[0]?.result as { label: string; model: { path: string } };
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "outpost-ota-model-"));
    const good = readFileSync(MODEL);
    release("good", "1.1.0", good);
    release("blind", "1.2.0", withoutWeights(good));
    release("garbage", "1.3.0", Buffer.from("not a model at all"));
    release("older", "1.0.0", good);
    server = await RangeServer.start(join(dir, "www"));
    broker = await Mosquitto.start();
    operator = await Operator.open(broker.port, ops);
    agent = await modelAgent(ID, broker, ops, releaseKey.publicText, inspecting("chip"));
  });
  after(async () => {
    await agent.cleanup();
    await operator.close();
    await broker.stop();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("a good model passes its golden sample and is committed: the task runs it from the models directory", async () => {
    const reply = await update("good");
    assert.equal(reply?.state, "succeeded", JSON.stringify(reply?.error));
    const r = reply?.result as Record<string, unknown>;
    assert.equal(r.state, "committed");
    assert.equal(r.kind, "model");
    assert.equal(r.version, "1.1.0");
    const models = join(agent.dir, "state", "models", "inspect");
    assert.match(readlinkSync(join(models, "current")), /^1\.1\.0-[0-9a-f]{12}\.onnx$/);
    const c = await classify("chip-1.png");
    assert.equal(c.label, "chip");
    assert.equal(c.model.path, join(models, readlinkSync(join(models, "current"))));
  });

  it("a model that fails its golden sample, or does not load, is rolled back: the previous model stays", async () => {
    for (const [name, reason] of [
      ["blind", /golden sample chip-1\.png: expected chip, got (good|scratch)/],
      ["garbage", /TASK_MODEL_INVALID/],
    ] as const) {
      // Parts keep coming while the candidate is checked: none of them may be judged by it.
      const during = Array.from({ length: 8 }, () => classify("scratch-1.png"));
      const reply = await update(name);
      for (const r of await Promise.all(during)) {
        assert.equal(r.label, "scratch", name);
        assert.match(r.model.path, /\/1\.1\.0-[0-9a-f]{12}\.onnx$/, name);
      }
      assert.equal(reply?.state, "succeeded", JSON.stringify(reply?.error));
      const r = reply?.result as Record<string, unknown>;
      assert.equal(r.state, "rolled-back", name);
      assert.match(String(r.reason), reason);
      assert.equal(r.from, "1.1.0");
      const models = join(agent.dir, "state", "models", "inspect");
      assert.match(readlinkSync(join(models, "current")), /^1\.1\.0-/);
      // Only the model kept and its link: the dropped file is gone.
      assert.deepEqual(readdirSync(models).filter((f) => f.endsWith(".onnx")).length, 1, name);
      assert.equal((await classify("scratch-1.png")).label, "scratch");
    }
  });

  it("a golden sample gates the agent's health (what an update on trial must reach): a wrong answer is named", async () => {
    const healthOf = async (op: Operator, id: string) => {
      const r = (await op.call(id, "describe", {}, { timeoutMs: 10_000 })).finals[0]?.result as {
        health: { healthy: { ok: boolean; reasons: string[] } };
      };
      return r.health.healthy;
    };
    assert.deepEqual(await healthOf(operator, ID), { ok: true, reasons: [] });
    const wrong = AgentProcess.run(sourceCommand(), {
      device: { id: "dev-golden" },
      mqtt: { url: broker.url },
      commands: { trustedKeys: [{ name: "ops", key: ops.publicText, allow: ["*"] }] },
      tasks: inspecting("good"),
    });
    try {
      await wrong.waitForLog("golden sample failed", 30_000);
      const h = await healthOf(operator, "dev-golden");
      assert.equal(h.ok, false);
      assert.equal(h.reasons.length, 1);
      assert.match(h.reasons[0] ?? "", /^tasks: inspect: golden sample chip-1\.png: expected good, got chip \(0\.99/);
    } finally {
      await wrong.cleanup();
    }
  });

  it("refuses an older model, and a model release that names no task, before downloading", async () => {
    const older = await update("older");
    assert.equal(older?.state, "failed");
    assert.equal(older?.error?.code, "OTA_DOWNGRADE");
    const noTask = await update("good", null);
    assert.equal(noTask?.error?.code, "OTA_KIND_UNSUPPORTED");
    assert.ok(!existsSync(join(agent.dir, "state", "models", "inspect", "1.0.0")));
  });

  it("a rollout of a model release (ctl rollout --task, --http): committed through the golden sample, the chunks from the static server; asked again, current", async () => {
    const keyFile = join(dir, "ops.key");
    writeFileSync(keyFile, ops.privatePem, { mode: 0o600 });
    const pins = join(dir, "known_devices");
    await pinAgent(pins, broker.url, ID, agent);
    // The model with a doc string appended (protobuf field 6): other bytes, the same weights. Only its last chunk
    // is new; the rest the device has from the model it runs.
    const doc = Buffer.from("rolled out");
    release("rolled", "1.4.0", Buffer.concat([readFileSync(MODEL), Buffer.from([0x32, doc.length]), doc]));
    const base = ["--broker", broker.url, "--key", keyFile, "--known-devices", pins, "--rollouts", join(dir, "r.db")];
    // The first on a terminal: the progress view redraws its wave table in place.
    const tty = Object.assign(new PassThrough(), { isTTY: true });
    let drawn = "";
    tty.on("data", (c: Buffer) => {
      drawn += c.toString();
    });
    const rollout = (more = {}) =>
      runCli(
        [
          "ctl",
          "rollout",
          join(dir, "www", "rolled"),
          "--devices",
          ID,
          "--waves",
          "1",
          "--soak",
          "2s",
          "--task",
          "inspect",
          "--http",
          server.url("rolled/"),
          ...base,
        ],
        {},
        undefined,
        more,
      );
    const served = server.requests;
    const r = await rollout({ stdout: tty });
    assert.equal(r.code, 0, `${drawn}\n${r.err}`);
    assert.match(drawn, /completed \(1 committed, 0 failed\)/);
    // Drawn at least twice (the soak alone outlasts the 1 s redraw): the second time over the first, each line
    // cleared, the columns apart.
    const ESC = "\u001b";
    assert.match(drawn, new RegExp(`${ESC}\\[\\d+A`));
    assert.match(
      drawn,
      new RegExp(
        `${ESC}\\[2K *wave +devices +pending +offline +in-flight +committed +rolled-back +failed +timed-out +state\n`,
      ),
    );
    // Every byte came from the static server: the driver serves chunks over MQTT only without --http.
    assert.ok(server.requests > served, "the device fetched from the --http URL");
    const models = join(agent.dir, "state", "models", "inspect");
    assert.match(readlinkSync(join(models, "current")), /^1\.4\.0-[0-9a-f]{12}\.onnx$/);
    assert.match((await classify("chip-1.png")).model.path, /\/1\.4\.0-[0-9a-f]{12}\.onnx$/);
    // A second rollout of the same model: the device runs that version already and says so, nothing fetched.
    const before = server.requests;
    const again = await rollout();
    assert.equal(again.code, 0, `${again.out}\n${again.err}`);
    assert.match(again.out, /completed \(1 committed, 0 failed\)/);
    const st = await runCli(["ctl", "rollout", "status", "--json", "--all", ...base]);
    const said = (JSON.parse(st.out) as { devices: { said: string | null }[] }).devices[0]?.said;
    assert.equal(said, "already current");
    assert.equal(server.requests, before, "nothing fetched for a model the device runs");
  });
});

describe("model updates release the sessions they replace, in every worker (issue 21, item 6)", () => {
  const ops = operatorKey();
  const releaseKey = generateKeys();
  const ID2 = "dev-sessions";
  const UPDATES = 20;
  let broker: Mosquitto;
  let operator: Operator;
  let agent: AgentProcess;
  let server: RangeServer;
  let dir: string;
  const signed: unknown[] = [];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "outpost-sessions-"));
    const file = join(dir, "good.onnx");
    writeFileSync(file, readFileSync(MODEL));
    // The same bytes under 20 versions: each is placed under its own file name, so each is a new session.
    for (let i = 1; i <= UPDATES; i++) {
      const r = makeRelease({
        file,
        privateKey: parsePrivateKey(releaseKey.privatePem),
        out: join(dir, "www", String(i)),
        kind: "model",
        version: `2.0.${i}`,
        now: 1,
      });
      signed.push(r.signed);
    }
    server = await RangeServer.start(join(dir, "www"));
    broker = await Mosquitto.start();
    operator = await Operator.open(broker.port, ops);
    agent = await modelAgent(ID2, broker, ops, releaseKey.publicText, { ...inspecting("chip"), workers: 3 });
  });
  after(async () => {
    await agent.cleanup();
    await operator.close();
    await broker.stop();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const sessions = async (): Promise<number[]> => {
    const r = (await operator.call(ID2, "task.list", {}, { timeoutMs: 10_000 })).finals[0]?.result as {
      pool: { sessions?: number[] };
    };
    return r.pool.sessions ?? [];
  };

  it(`${UPDATES} updates while parts are judged on 3 workers: each worker holds one session at the end`, async () => {
    for (let i = 1; i <= UPDATES; i++) {
      // Parts on every worker during the update: each loads the model it is given.
      const during = Array.from({ length: 6 }, () =>
        operator.call(
          ID2,
          "task.run",
          { task: "inspect", input: { image: sample("chip-1.png").toString("base64") } },
          { timeoutMs: 30_000 },
        ),
      );
      const reply = (
        await operator.call(
          ID2,
          "update",
          { manifest: signed[i - 1], source: { http: server.url(`${i}/`) }, task: "inspect" },
          { timeoutMs: 60_000 },
        )
      ).finals[0];
      assert.equal((reply?.result as { state?: string } | undefined)?.state, "committed", JSON.stringify(reply));
      for (const c of await Promise.all(during)) assert.equal(c.finals[0]?.state, "succeeded");
    }
    // Then enough parts that every worker runs the current model, and the count settles.
    const deadline = Date.now() + 30_000;
    let seen: number[] = [];
    for (;;) {
      await Promise.all(
        Array.from({ length: 9 }, () =>
          operator.call(
            ID2,
            "task.run",
            { task: "inspect", input: { image: sample("good-1.png").toString("base64") } },
            { timeoutMs: 30_000 },
          ),
        ),
      );
      seen = await sessions();
      if (seen.length === 3 && seen.every((n) => n === 1)) break;
      assert.ok(Date.now() < deadline, `sessions per worker: ${JSON.stringify(seen)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.deepEqual(seen, [1, 1, 1]);
  });
});

/**
 * The model with every large tensor's raw_data (TensorProto field 9) zeroed: it still parses and runs, but it
 * has forgotten what it learned, and every part gets the same answer.
 */
function withoutWeights(model: Buffer): Buffer {
  const out = Buffer.from(model);
  let zeroed = 0;
  for (let i = 0; i < out.length - 4; i++) {
    if (out[i] !== 0x4a) continue;
    let length = 0;
    let shift = 0;
    let at = i + 1;
    for (; at < out.length && shift < 28; at++, shift += 7) {
      const byte = out[at] ?? 0;
      length |= (byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) break;
    }
    at += 1;
    if (length >= 256 && length % 4 === 0 && at + length <= out.length) {
      out.fill(0, at, at + length);
      zeroed += length;
      i = at + length - 1;
    }
  }
  assert.ok(zeroed > model.length / 2, `zeroed ${zeroed} of ${model.length} bytes`);
  return out;
}
