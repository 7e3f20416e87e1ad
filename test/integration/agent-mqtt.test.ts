import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import Ajv2020 from "ajv/dist/2020.js";
import { checkAnswer } from "../../src/commands/answers.ts";
import { parsePublicKey } from "../../src/commands/keys.ts";
import { fingerprintOf } from "../../src/kernel/identity.ts";
import { AgentProcess, ROOT, sourceCommand } from "../helpers/agent-process.ts";
import { PREFIX } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { type Received, Watch } from "../helpers/mqtt-watch.ts";

/** The status's JSON Schema as docs/mqtt-api.md gives it. */
function statusSchema() {
  const doc = readFileSync(join(ROOT, "docs", "mqtt-api.md"), "utf8");
  const block = /```json\n(\{\n {2}"\$schema"[^`]*?"\$id": "outpost\/v1\/status"[\s\S]*?)\n```/.exec(doc)?.[1];
  assert.ok(block, "docs/mqtt-api.md has the status schema");
  return new Ajv2020.default({ allErrors: true, strict: false }).compile(JSON.parse(block));
}

function config(port: number, id: string, mqtt: Record<string, unknown> = {}) {
  return {
    device: { id },
    mqtt: { url: `mqtt://127.0.0.1:${port}`, reconnectMin: "50ms", reconnectMax: "500ms", keepalive: "5s", ...mqtt },
    telemetry: { interval: "200ms", fullInterval: "50ms" },
  };
}

const isStatus = (id: string, state: string, session?: string) => (m: Received) =>
  m.topic === `${PREFIX}/${id}/status` &&
  m.json.state === state &&
  (session === undefined || m.json.session === session);

// QoS 1 is at least once: a message in flight when the link drops may arrive twice (docs/mqtt-api.md), and
// session + seq identify the copy. So: every seq once after removing copies, no gap, and a copy only of a
// message within the in-flight window (outbox.window, 64) and with the same body.
function assertConsecutive(messages: Received[], { copies = false } = {}): void {
  const seqs = messages.map((m) => m.json.seq as number);
  assert.ok(seqs.length > 0, "no telemetry");
  const firstOf = new Map<number, Received>();
  for (const m of messages) {
    const seq = m.json.seq as number;
    const first = firstOf.get(seq);
    if (first === undefined) firstOf.set(seq, m);
    else {
      assert.ok(copies, `seq repeats: ${seqs.join(",")}`);
      assert.deepEqual(
        { ...m.json, replayed: undefined },
        { ...first.json, replayed: undefined },
        `copy of ${seq} differs`,
      );
    }
  }
  const unique = [...firstOf.keys()];
  assert.deepEqual(
    unique,
    unique.map((_, i) => (unique[0] as number) + i),
    `seq has gaps or is out of order: ${seqs.join(",")}`,
  );
  assert.ok(seqs.length - unique.length <= 64, `more copies than the in-flight window: ${seqs.join(",")}`);
}

describe("agent against a real mosquitto", () => {
  let broker: Mosquitto;
  let watch: Watch;

  before(async () => {
    broker = await Mosquitto.start();
    watch = await Watch.open(broker.port, [`${PREFIX}/#`]);
  });
  after(async () => {
    await watch.close();
    await broker.stop();
  });

  it("announces online (retained), sends telemetry with consecutive seq, and says offline on SIGTERM", async () => {
    const agent = AgentProcess.run(sourceCommand(), config(broker.port, "dev-basic"));
    try {
      const online = await watch.waitFor(isStatus("dev-basic", "online"), 15_000, "online status");
      const session = online.json.session as string;
      assert.match(session, /^[0-9a-f-]{36}$/);
      assert.equal(online.json.protocolVersion, 5);
      // Issue 25, item 1: the status fits the documented schema and names the key the agent made in state.dir.
      const validate = statusSchema();
      assert.ok(validate(online.json), JSON.stringify(validate.errors));
      const pub = readFileSync(join(agent.dir, "state", "device.pub"), "utf8").trim();
      assert.equal(online.json.deviceKey, pub);
      assert.equal(online.json.fingerprint, fingerprintOf(pub));
      // Issue 25, item 2: the status is signed with that key (the will, sent by the broker later, is not).
      const key = parsePublicKey(pub);
      assert.equal(checkAnswer(key, "dev-basic", online.topic, online.text).state, "verified");

      // A consumer that connects later still learns the state from the retained message.
      const late = await Watch.open(broker.port, [`${PREFIX}/dev-basic/status`]);
      const retained = await late.waitFor(() => true, 5000, "retained status");
      await late.close();
      assert.equal(retained.retain, true);
      assert.equal(retained.json.state, "online");

      await watch.waitFor(() => watch.telemetry(session).length >= 3, 10_000, "three telemetry messages");
      const telemetry = watch.telemetry(session);
      assertConsecutive(telemetry);
      const first = telemetry[0]?.json ?? {};
      assert.equal(first.seq, 1);
      for (const key of ["ts", "mono"]) assert.equal(typeof first[key], "number", key);
      assert.equal(typeof first.clockSynced, "boolean");
      const metrics = first.metrics as Record<string, unknown>;
      for (const key of ["memory", "disk", "network", "uptime", "load", "outbox"]) assert.ok(key in metrics, key);
      const later = telemetry[2]?.json.metrics as { cpu?: { load: number; cores: number[] } };
      assert.equal(typeof later.cpu?.load, "number");
      assert.ok(Array.isArray(later.cpu?.cores) && later.cpu.cores.length > 0);

      const exit = await agent.stop("SIGTERM");
      assert.deepEqual(exit, { code: 0, signal: null });
      await watch.waitFor(isStatus("dev-basic", "offline", session), 5000, "offline status");
      const after = await Watch.open(broker.port, [`${PREFIX}/dev-basic/status`]);
      const final = await after.waitFor(() => true, 5000, "retained status after stop");
      await after.close();
      assert.equal(final.json.state, "offline");
      assert.equal(checkAnswer(parsePublicKey(pub), "dev-basic", final.topic, final.text).state, "verified");
      assert.ok(!watch.items.some(isStatus("dev-basic", "lost", session)), "a clean stop must not fire the will");

      // The same key at the next start: the device is the same device.
      const again = AgentProcess.run(sourceCommand(), config(broker.port, "dev-basic"), {}, agent.dir);
      try {
        const next = await watch.waitFor(
          (m) => isStatus("dev-basic", "online")(m) && m.json.session !== session,
          15_000,
          "online again",
        );
        assert.equal(next.json.fingerprint, online.json.fingerprint);
      } finally {
        await again.stop("SIGTERM");
      }
    } finally {
      await agent.cleanup();
    }
  });

  it("leaves a retained lost status (the will) when killed with SIGKILL", async () => {
    const agent = AgentProcess.run(sourceCommand(), config(broker.port, "dev-kill"));
    try {
      const online = await watch.waitFor(isStatus("dev-kill", "online"), 15_000, "online status");
      const exit = await agent.stop("SIGKILL");
      assert.equal(exit.signal, "SIGKILL");
      const lost = await watch.waitFor(isStatus("dev-kill", "lost", online.json.session as string), 15_000, "lost");
      assert.equal(lost.json.session, online.json.session);
      const late = await Watch.open(broker.port, [`${PREFIX}/dev-kill/status`]);
      const retained = await late.waitFor(() => true, 5000, "retained status");
      await late.close();
      assert.equal(retained.json.state, "lost");
    } finally {
      await agent.cleanup();
    }
  });

  it("reconnects after the broker restarts, announces online again, and loses no telemetry", async () => {
    // A broker of its own, with persistence, and a subscriber with a persistent session: every message the
    // agent gets acknowledged reaches the subscriber, so any gap would be the agent's.
    const own = await Mosquitto.start({ extra: ["persistence true"] });
    const sub = await Watch.open(own.port, [`${PREFIX}/#`], {
      clean: false,
      clientId: "watch-restart",
      properties: { sessionExpiryInterval: 3600 },
    });
    const cfg = { ...config(own.port, "dev-restart"), log: { level: "debug" } };
    const agent = AgentProcess.run(sourceCommand(), cfg);
    try {
      const online = await sub.waitFor(isStatus("dev-restart", "online"), 15_000, "online status");
      const session = online.json.session as string;
      await sub.waitFor(() => sub.telemetry(session).length >= 2, 10_000, "telemetry before the outage");
      await own.halt();
      await agent.waitForLog("mqtt connection lost");
      const lostAt = agent.stdout.items.length;
      // Two telemetry cycles while the broker is down: they must be queued, not lost.
      await agent.stdout.waitFor(
        () => agent.stdout.items.slice(lostAt).filter((l) => l.includes('"msg":"telemetry sampled"')).length >= 2,
        10_000,
        "telemetry during the outage",
      );
      const producedBeforeResume = Math.max(
        ...agent
          .logs()
          .filter((l) => l.msg === "telemetry sampled")
          .map((l) => l.cycle as number),
      );
      await own.resume();
      const again = await sub.waitForNext(isStatus("dev-restart", "online", session), 15_000, "online again");
      assert.equal(again.json.session, session);
      await sub.waitFor(
        (m) => m.json.session === session && (m.json.seq as number) > producedBeforeResume,
        10_000,
        "telemetry produced after the restart",
      );
      assert.deepEqual(await agent.stop("SIGTERM"), { code: 0, signal: null });
      // The broker stopped with a PUBLISH read but its PUBACK unsent: that message is sent again.
      assertConsecutive(sub.telemetry(session), { copies: true });
    } finally {
      await agent.cleanup();
      await sub.close();
      await own.stop();
    }
  });

  it("speaks MQTT 3.1.1 when configured to", async () => {
    const agent = AgentProcess.run(sourceCommand(), config(broker.port, "dev-v311", { protocolVersion: 4 }));
    try {
      const online = await watch.waitFor(isStatus("dev-v311", "online"), 15_000, "online status");
      assert.equal(online.json.protocolVersion, 4);
      await watch.waitFor((m) => m.topic.endsWith("dev-v311/telemetry"), 10_000, "telemetry over 3.1.1");
      assert.deepEqual(await agent.stop("SIGTERM"), { code: 0, signal: null });
      await watch.waitFor(isStatus("dev-v311", "offline"), 5000, "offline status");
    } finally {
      await agent.cleanup();
    }
  });
});
