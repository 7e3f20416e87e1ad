import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import mqtt from "mqtt";
import { stringify } from "yaml";
import { checkAnswer, requestDigest } from "../../src/commands/answers.ts";
import { signPayload } from "../../src/commands/envelope.ts";
import { parsePublicKey } from "../../src/commands/keys.ts";
import { AgentProcess, sourceCommand } from "../helpers/agent-process.ts";
import { operatorKey, request } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { type Received, Watch } from "../helpers/mqtt-watch.ts";
import { Operator, PREFIX } from "../helpers/operator.ts";

const run = promisify(execFile);
const ops = operatorKey();
const viewer = operatorKey();
const configurer = operatorKey();
const CTL = `${PREFIX}/dev-cmd/reply/integration`;

function config(port: number, id: string, more: Record<string, unknown> = {}) {
  return {
    device: { id, groups: ["line-3"] },
    mqtt: { url: `mqtt://127.0.0.1:${port}`, reconnectMin: "50ms", reconnectMax: "500ms" },
    telemetry: { interval: "1s", fullInterval: "50ms" },
    commands: {
      trustedKeys: [
        { name: "ops", key: ops.publicText, allow: ["*"] },
        { name: "viewer", key: viewer.publicText, allow: ["ping", "describe", "config.get"] },
        { name: "configurer", key: configurer.publicText, allow: ["ping", "config.*"] },
      ],
    },
    ...more,
  };
}

/** Publishes `count` unsigned requests as fast as the broker takes them (QoS 0, one connection). */
async function mqttFlood(port: number, topic: string, count: number, responseTopic: string): Promise<void> {
  const client = await mqtt.connectAsync({ host: "127.0.0.1", port, protocolVersion: 5 });
  try {
    for (let i = 0; i < count; i++) {
      client.publish(topic, JSON.stringify({ id: `flood-${i}` }), { qos: 0, properties: { responseTopic } });
    }
    await client.publishAsync(topic, JSON.stringify({ id: "flood-last" }), { qos: 1, properties: { responseTopic } });
  } finally {
    await client.endAsync();
  }
}

const online = (id: string) => (m: Received) => m.topic === `${PREFIX}/${id}/status` && m.json.state === "online";
const gaps = (messages: Received[]) =>
  messages.slice(1).map((m, i) => (m.json.mono as number) - ((messages[i] as Received).json.mono as number));

describe("remote commands against a real mosquitto", () => {
  let broker: Mosquitto;
  let watch: Watch;
  let operator: Operator;
  let agent: AgentProcess;

  before(async () => {
    broker = await Mosquitto.start();
    watch = await Watch.open(broker.port, [`${PREFIX}/#`]);
    operator = await Operator.open(broker.port, ops);
    agent = AgentProcess.run(sourceCommand(), config(broker.port, "dev-cmd"));
    await watch.waitFor(online("dev-cmd"), 15_000, "dev-cmd online");
  });
  after(async () => {
    await agent.cleanup();
    await operator.close();
    await watch.close();
    await broker.stop();
  });

  const interval = async (device = "dev-cmd") => {
    const reply = await operator.final(device, "config.get", { path: "telemetry.interval" });
    return reply.result as { version: number; value: string };
  };

  it("signs every reply with the device key, on the operator's MQTT 5 response topic too, naming its request", async () => {
    const reply = await operator.final("dev-cmd", "ping");
    assert.equal(reply.state, "succeeded");
    const key = parsePublicKey(readFileSync(join(agent.dir, "state", "device.pub"), "utf8"));
    const sent = watch.items.findLast((m) => m.topic === `${PREFIX}/dev-cmd/cmd/ping`);
    assert.ok(sent, "the request was seen on the wire");
    const seen = () =>
      watch.items.filter((m) => m.topic.startsWith(`${PREFIX}/dev-cmd/reply/`) && m.json.id === reply.id);
    await watch.waitFor(() => seen().length >= 2, 5000, "both replies on the response topic");
    const replies = seen();
    assert.deepEqual(
      replies.map((m) => m.json.state),
      ["accepted", "succeeded"],
    );
    for (const m of replies) {
      assert.equal(checkAnswer(key, "dev-cmd", m.topic, m.text).state, "verified", m.text);
      assert.equal(m.json.request, requestDigest(sent.text));
    }
  });

  it("refuses a request captured off the wire and re-published, and executes nothing", async () => {
    const first = await operator.final("dev-cmd", "config.set", {
      patch: { telemetry: { interval: "2s", fullInterval: "50ms" } },
    });
    assert.equal(first.state, "succeeded");
    const captured = watch.items.findLast((m) => m.topic === `${PREFIX}/dev-cmd/cmd/config.set`);
    assert.ok(captured, "the request was seen on the wire");
    await operator.final("dev-cmd", "config.set", { patch: { telemetry: { interval: "3s", fullInterval: "50ms" } } });
    const before = await interval();

    const reply = watch.waitForNext((m) => m.topic === `${PREFIX}/dev-cmd/cmd/config.set/reply`, 5000, "reply");
    await watch.client.publishAsync(`${PREFIX}/dev-cmd/cmd/config.set`, captured.text, { qos: 1 });
    assert.equal((await reply).json.state, "failed");
    assert.deepEqual((await reply).json.error, { code: "NONCE_REPLAYED", message: "request nonce seen before" });
    // Issue 25: the refusal answers the copy, not the request: neither its id nor its digest, so that no operator
    // takes it for the answer to the genuine request.
    assert.equal((await reply).json.id, undefined);
    assert.equal((await reply).json.request, undefined);
    assert.deepEqual(await interval(), before, "still 3s, same version: the replay changed nothing");
    assert.equal(before.value, "3s");
  });

  it("refuses a valid signature over changed params, unsigned, other-device and not-allowed requests", async () => {
    const before = await interval();
    const envelope = signPayload(
      JSON.stringify(
        request(
          {
            command: "config.set",
            device: "dev-cmd",
            params: { patch: { telemetry: { interval: "9s", fullInterval: "50ms" } } },
          },
          Date.now(),
        ),
      ),
      ops.privateKey,
      ops.publicText,
    );
    const cases: [string, string, string][] = [
      [
        "config.set",
        JSON.stringify({ ...envelope, payload: envelope.payload.replace('"9s"', '"8s"') }),
        "SIGNATURE_INVALID",
      ],
      [
        "config.set",
        JSON.stringify({ id: "plain", params: { patch: { telemetry: { interval: "8s", fullInterval: "50ms" } } } }),
        "COMMAND_UNSIGNED",
      ],
      [
        "config.set",
        JSON.stringify(
          signPayload(
            JSON.stringify(request({ command: "config.set", device: "dev-other", params: { patch: {} } }, Date.now())),
            ops.privateKey,
            ops.publicText,
          ),
        ),
        "WRONG_DEVICE",
      ],
      [
        "config.set",
        JSON.stringify(
          signPayload(
            JSON.stringify(
              request(
                {
                  command: "config.set",
                  device: "dev-cmd",
                  params: { patch: { telemetry: { interval: "8s", fullInterval: "50ms" } } },
                },
                Date.now(),
              ),
            ),
            viewer.privateKey,
            viewer.publicText,
          ),
        ),
        "KEY_NOT_ALLOWED",
      ],
    ];
    for (const [name, payload, code] of cases) {
      // Unauthenticated refusals are answered only on a ctl response topic (issue 8).
      const reply = watch.waitForNext((m) => m.topic === CTL && m.json.error !== undefined, 5000, code);
      await watch.client.publishAsync(`${PREFIX}/dev-cmd/cmd/${name}`, payload, {
        qos: 1,
        properties: { responseTopic: CTL },
      });
      assert.equal(((await reply).json.error as { code: string }).code, code);
    }
    assert.deepEqual(await interval(), before, "no request changed the config");
  });

  // Issue 8, item 3: on bbb3be8 the configurer key set allowUnsigned (then an unsigned restart ran) and gave
  // itself "*"; both were stored.
  it("a key allowed only ping and config.* cannot widen itself or open the device to unsigned commands", async () => {
    const before = await interval();
    const self = await Operator.open(broker.port, configurer);
    try {
      const unsigned = await self.final("dev-cmd", "config.set", { patch: { commands: { allowUnsigned: true } } });
      assert.equal(unsigned.state, "failed");
      assert.equal(unsigned.error?.code, "BAD_PARAMS");
      const widen = { name: "configurer", key: configurer.publicText, allow: ["*"] };
      const trust = await self.final("dev-cmd", "config.set", { patch: { commands: { trustedKeys: [widen] } } });
      assert.equal(trust.error?.code, "KEY_NOT_ALLOWED");
      // "*" does not imply trust either.
      const byOps = await operator.final("dev-cmd", "config.set", { patch: { commands: { trustedKeys: [widen] } } });
      assert.equal(byOps.error?.code, "KEY_NOT_ALLOWED");
      const reply = watch.waitForNext((m) => m.topic === CTL && m.json.id === "unsigned-restart", 5000, "refusal");
      await watch.client.publishAsync(`${PREFIX}/dev-cmd/cmd/restart`, JSON.stringify({ id: "unsigned-restart" }), {
        qos: 1,
        properties: { responseTopic: CTL },
      });
      assert.equal(((await reply).json.error as { code: string }).code, "COMMAND_UNSIGNED");
      const config = (await operator.final("dev-cmd", "config.get", { path: "commands" })).result as {
        value: { allowUnsigned: boolean; trustedKeys: { name: string; allow: string[] }[] };
      };
      assert.equal(config.value.allowUnsigned, false);
      assert.deepEqual(config.value.trustedKeys.find((k) => k.name === "configurer")?.allow, ["ping", "config.*"]);
      assert.deepEqual(await interval(), before);
      assert.equal(agent.child.exitCode, null, "still running");
    } finally {
      await self.close();
    }
  });

  // Issue 8, items 6 and 7: on bbb3be8 10,000 unsigned requests gave 10,000 warn lines and 10,000 replies.
  it("10,000 unsigned requests: bounded replies and log lines, counted in telemetry, no seq missing", async () => {
    const status = await watch.waitFor(online("dev-cmd"), 1000, "status");
    const session = status.json.session as string;
    const linesBefore = agent.logs().filter((l) => l.msg === "command refused").length;
    const repliesBefore = watch.items.filter((m) => m.topic === CTL).length;
    const flood = mqttFlood(broker.port, `${PREFIX}/dev-cmd/cmd/ping`, 10_000, CTL);
    await flood;
    // Telemetry that reports every refusal comes after the flood was handled.
    const counted = await watch.waitForNext(
      (m) =>
        m.topic === `${PREFIX}/dev-cmd/telemetry` &&
        ((m.json.metrics as { commands?: { refused: number } }).commands?.refused ?? 0) >= 10_000,
      20_000,
      "telemetry counting the refusals",
    );
    const counts = (counted.json.metrics as { commands: { refused: number; suppressed: number } }).commands;
    const lines = agent.logs().filter((l) => l.msg === "command refused").length - linesBefore;
    const replies = watch.items.filter((m) => m.topic === CTL).length - repliesBefore;
    assert.ok(lines <= 60, `${lines} log lines`);
    assert.ok(replies <= 60, `${replies} replies`);
    assert.ok(counts.suppressed >= 10_000 - 60, `${counts.suppressed} suppressed`);
    const mine = watch.items.filter((m) => m.json.session === session && typeof m.json.seq === "number");
    const seqs = new Set(mine.map((m) => m.json.seq as number));
    const top = Math.max(...seqs);
    const missing = Array.from({ length: top }, (_, i) => i + 1).filter((n) => !seqs.has(n));
    assert.deepEqual(missing, [], "every seq of the session arrived");
  });

  it("a group call is published once and answered by every member", async () => {
    const second = AgentProcess.run(sourceCommand(), config(broker.port, "dev-cmd-2"));
    try {
      await watch.waitFor(online("dev-cmd-2"), 15_000, "dev-cmd-2 online");
      const published = watch.items.length;
      const result = await operator.call("", "ping", undefined, { device: undefined, group: "line-3", expect: 2 });
      assert.deepEqual(result.finals.map((r) => r.device).sort(), ["dev-cmd", "dev-cmd-2"]);
      assert.ok(result.finals.every((r) => r.state === "succeeded"));
      const requests = watch.items.slice(published).filter((m) => m.topic.startsWith(`${PREFIX}/_group/line-3/cmd/`));
      assert.equal(requests.length, 1);
    } finally {
      await second.cleanup();
    }
  });

  it("Debian's python3 + paho-mqtt, signing from the documented bytes, gets a reply", async () => {
    const keyFile = join(agent.dir, "ops.key");
    writeFileSync(keyFile, ops.privatePem, { mode: 0o600 });
    const peer = join(import.meta.dirname, "..", "fixtures", "python-peer.py");
    const { stdout } = await run(
      "/usr/bin/python3",
      [peer, "127.0.0.1", String(broker.port), PREFIX, "dev-cmd", "describe", keyFile, ops.publicText],
      { timeout: 30_000 },
    );
    const replies = stdout
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    assert.deepEqual(
      replies.map((r) => r.state),
      ["accepted", "succeeded"],
    );
    assert.equal((replies[1]?.result as { device?: string } | undefined)?.device, "dev-cmd");
  });
});

describe("hot reload", () => {
  let broker: Mosquitto;
  let watch: Watch;
  let operator: Operator;

  before(async () => {
    broker = await Mosquitto.start();
    watch = await Watch.open(broker.port, [`${PREFIX}/#`]);
    operator = await Operator.open(broker.port, ops);
  });
  after(async () => {
    await operator.close();
    await watch.close();
    await broker.stop();
  });

  it("applies a file change without a restart, keeps the old config on an invalid one", async () => {
    const base = config(broker.port, "dev-hot", { telemetry: { interval: "1s", fullInterval: "50ms" } });
    const agent = AgentProcess.run(sourceCommand(), base);
    const file = join(agent.dir, "config.yaml");
    const write = (c: Record<string, unknown>) =>
      writeFileSync(file, stringify({ state: { dir: join(agent.dir, "state") }, ...c }));
    try {
      const status = await watch.waitFor(online("dev-hot"), 15_000, "online");
      const session = status.json.session as string;
      await watch.waitFor(() => watch.telemetry(session).length >= 3, 10_000, "three at 1s");
      const slow = gaps(watch.telemetry(session));
      assert.ok(Math.min(...slow) >= 900, `1s interval, gaps ${slow.join(",")}`);

      // The file watcher picks the change up: no signal, no restart (same session).
      write({ ...base, telemetry: { interval: "100ms", fullInterval: "50ms" } });
      await agent.waitForLog("configuration applied");
      const from = watch.telemetry(session).length;
      await watch.waitFor(() => watch.telemetry(session).length >= from + 6, 10_000, "six at 100ms");
      const fast = gaps(watch.telemetry(session).slice(from + 1));
      assert.ok(Math.max(...fast) < 600, `100ms interval, gaps ${fast.join(",")}`);
      const applied = (await operator.final("dev-hot", "config.get")).result as { version: number };
      assert.equal(applied.version, 2);

      // An invalid file: logged, refused, and the agent keeps running version 2.
      write({ ...base, telemetry: { interval: "often" } });
      agent.child.kill("SIGHUP");
      const refusal = JSON.parse(await agent.waitForLog("configuration change refused; keeping the current one"));
      assert.match(String(refusal.problems), /telemetry\.interval: expected a duration/);
      const kept = (await operator.final("dev-hot", "config.get", { path: "telemetry.interval" })).result;
      assert.deepEqual(kept, {
        version: 2,
        hash: (kept as { hash: string }).hash,
        path: "telemetry.interval",
        value: "100ms",
      });
      assert.equal(watch.items.filter(online("dev-hot")).at(-1)?.json.session, session, "never restarted");
    } finally {
      await agent.cleanup();
    }
  });

  it("a config.set and a SIGHUP at the same moment leave one consistent version with both changes", async () => {
    const base = config(broker.port, "dev-race", { log: { level: "info" } });
    const agent = AgentProcess.run(sourceCommand(), base);
    const file = join(agent.dir, "config.yaml");
    try {
      await watch.waitFor(online("dev-race"), 15_000, "online");
      writeFileSync(file, stringify({ state: { dir: join(agent.dir, "state") }, ...base, log: { level: "debug" } }));
      const [set] = await Promise.all([
        operator.final("dev-race", "config.set", { patch: { telemetry: { interval: "300ms", fullInterval: "50ms" } } }),
        Promise.resolve().then(() => agent.child.kill("SIGHUP")),
      ]);
      assert.equal(set.state, "succeeded");
      // The file watcher may report the same change again: an unchanged config is no new version.
      await agent.waitForLog("configuration applied");
      const got = (await operator.final("dev-race", "config.get")).result as {
        version: number;
        hash: string;
        config: { log: { level: string }; telemetry: { interval: string } };
      };
      assert.equal(got.config.log.level, "debug");
      assert.equal(got.config.telemetry.interval, "300ms");
      // Whichever ran first, the file's change may already be in the config.set's snapshot: one version
      // or two, but exactly one per applied change and each complete.
      const applied = agent.logs().filter((l) => l.msg === "configuration applied");
      assert.equal(got.version, 1 + applied.length);
      assert.deepEqual(applied.at(-1)?.version, got.version);
      const described = (await operator.final("dev-race", "describe")).result as {
        config: { version: number; hash: string };
      };
      assert.deepEqual(described.config, { version: got.version, hash: got.hash, restartRequired: [] });
      const status = await watch.waitFor(
        (m) => online("dev-race")(m) && m.json.configVersion === got.version,
        5000,
        "status with the current version",
      );
      assert.equal(status.json.configHash, got.hash);
    } finally {
      await agent.cleanup();
    }
  });
});

describe("bridged brokers", () => {
  it("a command from the central broker reaches a device on a bridged local broker, and the reply comes back", async () => {
    const central = await Mosquitto.start();
    const local = await Mosquitto.start({
      extra: [
        "connection central",
        `address 127.0.0.1:${central.port}`,
        "cleansession true",
        `topic ${PREFIX}/# both 1`,
        "bridge_protocol_version mqttv311",
      ],
    });
    const watch = await Watch.open(central.port, [`${PREFIX}/#`]);
    const operator = await Operator.open(central.port, ops);
    const agent = AgentProcess.run(sourceCommand(), config(local.port, "dev-bridged"));
    try {
      await watch.waitFor(online("dev-bridged"), 20_000, "status through the bridge");
      await watch.waitFor((m) => m.topic === `${PREFIX}/dev-bridged/telemetry`, 10_000, "telemetry through the bridge");
      const reply = await operator.final("dev-bridged", "ping");
      assert.equal(reply.state, "succeeded");
      assert.deepEqual(reply.result, { pong: true });
    } finally {
      await agent.cleanup();
      await operator.close();
      await watch.close();
      await local.stop();
      await central.stop();
    }
  });
});
