// Issue 25 items 2, 3 and 6: what ctl counts, attacked with nothing but a broker login. On 9a6efd7 (before ctl
// checked device keys) `ctl call ghost reboot` printed the forger's result and exited 0, `ctl update --group
// line-9 --expect 3` counted three made-up devices committed (exit 0), `ctl update real-1` reported the forger's
// `committed 9.9.9`, and a device's old genuine reply, replayed under a new request's id, was taken as the answer.
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import mqtt, { type MqttClient } from "mqtt";
import { signAnswer } from "../../src/commands/answers.ts";
import { fingerprintOf, parsePrivateKey } from "../../src/commands/keys.ts";
import { makeRelease } from "../../src/ota/release.ts";
import { AgentProcess, sourceCommand } from "../helpers/agent-process.ts";
import { runCli } from "../helpers/cli.ts";
import { operatorKey, PREFIX } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { type Received, Watch } from "../helpers/mqtt-watch.ts";
import { fakeAgent } from "../helpers/releases.ts";
import { tempDir } from "../helpers/temp.ts";

const dir = tempDir("outpost-answer-trust-");
const ops = operatorKey();
const releaseKey = operatorKey();
writeFileSync(join(dir, "ops.key"), ops.privatePem, { mode: 0o600 });
const pins = join(dir, "known_devices");

/** The request a forger reads on a device's command topic: the id every answer must carry. */
function requestOf(payload: Buffer): { id: string } {
  return JSON.parse((JSON.parse(payload.toString()) as { payload: string }).payload) as { id: string };
}

describe("ctl counts only what a pinned device signed (issue 25)", () => {
  let broker: Mosquitto;
  let forger: MqttClient;
  let watch: Watch;
  let agent: AgentProcess;
  let release: string;
  const ctl = (args: string[], timeout = "5s") =>
    runCli([
      "ctl",
      ...args,
      "--broker",
      broker.url,
      "--known-devices",
      pins,
      ...(args[0] === "call" || args[0] === "update" ? ["--key", join(dir, "ops.key"), "--timeout", timeout] : []),
    ]);
  const startReal = (reuse?: string) =>
    AgentProcess.run(
      sourceCommand(),
      {
        device: { id: "real-1", groups: ["line-9"] },
        mqtt: { url: broker.url, reconnectMin: "50ms", reconnectMax: "500ms" },
        commands: { trustedKeys: [{ name: "ops", key: ops.publicText, allow: ["*"] }] },
        update: { trustedKeys: [releaseKey.publicText], maxSize: "16MiB" },
      },
      {},
      reuse,
    );
  const online = (m: Received) => m.topic === `${PREFIX}/real-1/status` && m.json.state === "online";

  before(async () => {
    broker = await Mosquitto.start();
    watch = await Watch.open(broker.port, [`${PREFIX}/real-1/status`]);
    forger = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
    agent = startReal();
    await watch.waitFor(online, 20_000, "real-1 online");
    const file = join(dir, "r.bin");
    writeFileSync(file, fakeAgent("9.9.9", process.arch === "arm64" ? "arm64" : "x64", 64 * 1024));
    release = join(dir, "r");
    makeRelease({ file, privateKey: parsePrivateKey(releaseKey.privatePem), out: release, kind: "agent", now: 1 });
  });
  after(async () => {
    await agent.cleanup();
    await forger.endAsync(true);
    await watch.close();
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("ctl trust refuses a fingerprint that is not the device's, and pins the one install printed", async () => {
    const other = fingerprintOf(ops.publicText);
    const wrong = await ctl(["trust", "real-1", other]);
    assert.equal(wrong.code, 65, wrong.err);
    assert.match(wrong.err, /NOT PINNED: its key is SHA256:/);
    const pub = readFileSync(join(agent.dir, "state", "device.pub"), "utf8").trim();
    const right = await ctl(["trust", "real-1", fingerprintOf(pub)]);
    assert.equal(right.code, 0, right.err);
    assert.match(readFileSync(pins, "utf8"), new RegExp(` ${PREFIX} real-1 ${pub.replace(/[+/]/g, "\\$&")}  # `));
    const call = await ctl(["call", "real-1", "ping"]);
    assert.equal(call.code, 0, call.err);
  });

  it("a copy of the request on another command topic: the device's signed refusal of it is refused (65)", async () => {
    // Review of 0710526: the refusal carried the request's id and digest, and ctl took it for the answer to a
    // slow command (here a restart, whose final reply would come from the next process: none is started).
    await forger.subscribeAsync(`${PREFIX}/real-1/cmd/restart`, { qos: 1 });
    const copy = (topic: string, payload: Buffer, packet: { properties?: Record<string, unknown> }) => {
      if (topic !== `${PREFIX}/real-1/cmd/restart`) return;
      forger.publish(`${PREFIX}/real-1/cmd/describe`, payload, { qos: 1, properties: packet.properties ?? {} });
    };
    forger.on("message", copy);
    try {
      const r = await ctl(["call", "real-1", "restart", "--params", '{"delay":2000}'], "4s");
      assert.equal(r.code, 65, r.err + r.out);
      assert.match(r.err, /FORGED answer refused: answers a copy of this request published on \S+\/cmd\/describe/);
      assert.doesNotMatch(r.err, /BAD_REQUEST/, "the refusal of the copy is not printed as the device's answer");
    } finally {
      forger.off("message", copy);
      await forger.unsubscribeAsync(`${PREFIX}/real-1/cmd/restart`);
    }
    // The agent stopped to be restarted (75); started again as systemd would, same state and key.
    assert.equal((await agent.exited).code, 75);
    agent = startReal(agent.dir);
    await watch.waitForNext(online, 20_000, "real-1 online again");
  });

  it("ctl call ghost: a forged status and reply for a device nobody pinned count for nothing (77)", async () => {
    const ghost = generateKeyPairSync("ed25519");
    await forger.publishAsync(`${PREFIX}/ghost/status`, JSON.stringify({ state: "online", version: "1.0.0" }), {
      qos: 1,
      retain: true,
    });
    await forger.subscribeAsync(`${PREFIX}/ghost/cmd/#`, { qos: 1 });
    const answer = (topic: string, payload: Buffer) => {
      if (!topic.endsWith("/cmd/reboot")) return;
      const { id } = requestOf(payload);
      const reply = `${PREFIX}/ghost/cmd/reboot/reply`;
      const body = JSON.stringify({ id, command: "reboot", device: "ghost", state: "succeeded", result: { ok: 1 } });
      // One unsigned, one signed by a key of the forger's own.
      forger.publish(reply, body, { qos: 1 });
      forger.publish(reply, signAnswer(ghost.privateKey, "ghost", reply, body), { qos: 1 });
    };
    forger.on("message", answer);
    try {
      const r = await ctl(["call", "ghost", "reboot"]);
      assert.equal(r.code, 77, r.err + r.out);
      assert.equal(r.out, "", "no result printed as the device's");
      assert.match(r.err, /ghost: answer not counted: unsigned \(version 1\.0\.0\)/);
    } finally {
      forger.off("message", answer);
      await forger.publishAsync(`${PREFIX}/ghost/status`, "", { qos: 1, retain: true });
    }
  });

  it("ctl update --group line-9 --expect 3: three made-up devices are not counted; a forged outcome for real-1 is refused (65)", async () => {
    await forger.subscribeAsync(`${PREFIX}/_group/line-9/cmd/#`, { qos: 1 });
    const answer = (topic: string, payload: Buffer) => {
      if (!topic.includes("/_group/line-9/cmd/update")) return;
      const { id } = requestOf(payload);
      for (const d of ["fake-1", "fake-2", "fake-3", "real-1"]) {
        // Each made-up member "accepts" the request, then "commits" (no signature: none of them has a key).
        const reply = { id, device: d, command: "update", state: "succeeded", result: {} };
        forger.publish(`${PREFIX}/${d}/cmd/update/reply`, JSON.stringify(reply), { qos: 1 });
        const t = `${PREFIX}/${d}/update`;
        forger.publish(t, JSON.stringify({ state: "committed", version: "9.9.9", id, session: "x", seq: 99 }), {
          qos: 1,
        });
      }
    };
    forger.on("message", answer);
    try {
      const r = await ctl(["update", "--group", "line-9", "--expect", "3", release], "4s");
      // real-1's own signed answer is its refusal (not installed); the forged `committed` for it changes nothing.
      assert.equal(r.code, 77, r.err + r.out);
      assert.doesNotMatch(r.out, /: committed$/m, r.out);
      assert.match(r.out, /^real-1: failed/m);
      for (const d of ["fake-1", "fake-2", "fake-3"])
        assert.match(r.out, new RegExp(`^${d}: committed, not counted`, "m"));
      assert.match(r.err, /1 of 3 devices answered, verified/);
    } finally {
      forger.off("message", answer);
    }
    // real-1 alone: the forger's outcome, signed by a key not real-1's, is a forgery, said as one.
    const own = generateKeyPairSync("ed25519");
    await forger.subscribeAsync(`${PREFIX}/real-1/cmd/update`, { qos: 1 });
    const forge = (topic: string, payload: Buffer) => {
      if (topic !== `${PREFIX}/real-1/cmd/update`) return;
      const { id } = requestOf(payload);
      const t = `${PREFIX}/real-1/update`;
      const body = JSON.stringify({ state: "committed", version: "9.9.9", id, session: "x", seq: 99 });
      forger.publish(t, signAnswer(own.privateKey, "real-1", t, body), { qos: 1 });
      // Shapes ctl never reads (review of 0710526: `null` here crashed ctl update).
      for (const bad of ["null", "[]", '{"state":{"toString":0}}', '{"state":"committed","version":5}']) {
        forger.publish(t, bad, { qos: 1 });
      }
      const reply = `${PREFIX}/real-1/cmd/update/reply`;
      forger.publish(reply, JSON.stringify({ id, device: "real-1", command: "update", state: 5 }), { qos: 1 });
    };
    forger.on("message", forge);
    try {
      const r = await ctl(["update", "real-1", release], "8s");
      assert.equal(r.code, 65, r.err + r.out);
      assert.match(r.err, /real-1: FORGED answer refused: the signature does not verify with real-1's pinned key/);
      assert.doesNotMatch(r.out, /committed/);
    } finally {
      forger.off("message", forge);
    }
  });

  it("a group call: a made-up member's answer is said and fails the call, unless --expect N verified came", async () => {
    await forger.subscribeAsync(`${PREFIX}/_group/line-9/cmd/#`, { qos: 1 });
    const answer = (topic: string, payload: Buffer) => {
      if (!topic.endsWith("/_group/line-9/cmd/ping")) return;
      const { id } = requestOf(payload);
      const reply = { id, device: "fake-9", command: "ping", state: "succeeded", result: { pong: true } };
      forger.publish(`${PREFIX}/fake-9/cmd/ping/reply`, JSON.stringify(reply), { qos: 1 });
    };
    forger.on("message", answer);
    try {
      const all = await ctl(["call", "line-9", "ping", "--group"], "3s");
      assert.equal(all.code, 77, all.err + all.out);
      assert.match(all.out, /^real-1 {2}succeeded/m);
      assert.doesNotMatch(all.out, /fake-9/);
      // The call ends at the first verified answer: fake-9's may come before it (said) or after (not read).
      const one = await ctl(["call", "line-9", "ping", "--group", "--expect", "1"], "3s");
      assert.equal(one.code, 0, one.err + one.out);
      assert.match(one.out, /^real-1 {2}succeeded/m);
    } finally {
      forger.off("message", answer);
    }
  });

  it("a genuine reply replayed under a new request's id is refused; a re-installed device until forget", async () => {
    // The forger keeps real-1's genuine reply to one request...
    await forger.subscribeAsync([`${PREFIX}/real-1/cmd/#`, `${PREFIX}/real-1/reply/#`], { qos: 1 });
    let genuine: { topic: string; text: string } | undefined;
    const keep = (topic: string, payload: Buffer) => {
      const text = payload.toString();
      if (text.includes('"state":"succeeded"') && text.includes('"pong"')) genuine = { topic, text };
    };
    forger.on("message", keep);
    const first = await ctl(["call", "real-1", "ping", "--protocol", "4"]);
    assert.equal(first.code, 0, first.err);
    await waitFor(() => genuine !== undefined);
    forger.off("message", keep);
    // ...and, with real-1 down, answers the next request with it, under that request's id.
    await agent.stop();
    const replay = (topic: string, payload: Buffer) => {
      if (topic !== `${PREFIX}/real-1/cmd/ping` || !genuine) return;
      const { id } = requestOf(payload);
      const old = JSON.parse(genuine.text) as { id: string };
      forger.publish(genuine.topic, genuine.text.replace(old.id, id), { qos: 1 });
      forger.publish(genuine.topic, genuine.text, { qos: 1 }); // as it was: another request's, ignored
    };
    forger.on("message", replay);
    try {
      const r = await ctl(["call", "real-1", "ping", "--protocol", "4", "--wait"], "3s");
      assert.equal(r.code, 65, r.err + r.out);
      assert.match(r.err, /FORGED answer refused/);
      assert.equal(r.out, "");
    } finally {
      forger.off("message", replay);
    }

    // Re-installed: a new key in the same place. Refused loudly until the operator forgets the old pin.
    rmSync(join(agent.dir, "state", "device.key"));
    agent = startReal(agent.dir);
    await watch.waitForNext(online, 20_000, "real-1 online with a new key");
    const refused = await ctl(["call", "real-1", "ping"]);
    assert.equal(refused.code, 65, refused.err);
    assert.match(refused.err, /THE KEY OF real-1 HAS CHANGED: pinned SHA256:\S+, its status now offers SHA256:/);
    const accepted = await ctl(["call", "real-1", "ping", "--accept-new"]);
    assert.equal(accepted.code, 65, "--accept-new never replaces a pin");
    assert.equal((await ctl(["forget", "real-1"])).code, 0);
    const pub = readFileSync(join(agent.dir, "state", "device.pub"), "utf8").trim();
    assert.equal((await ctl(["trust", "real-1", fingerprintOf(pub)])).code, 0);
    const again = await ctl(["call", "real-1", "ping"]);
    assert.equal(again.code, 0, again.err);
  });
});

async function waitFor(ok: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
