// Issue 26, part C: beyond one broker. A two-node RabbitMQ 3.10 cluster started here (Debian's package), the
// devices on one node and the operator on the other. Before this, the agent never connected (MQTT 5 closed
// unanswered), commands with a dot never arrived (`.` becomes a level separator), `ctl devices` was empty
// (retained messages reach only exact subscriptions, on the node that holds them), and a node going down left
// its devices waiting for it.
import assert from "node:assert/strict";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { generateKeys, parsePrivateKey } from "../../src/commands/keys.ts";
import { makeRelease } from "../../src/ota/release.ts";
import { AgentProcess, sourceCommand } from "../helpers/agent-process.ts";
import { runCli } from "../helpers/cli.ts";
import { operatorKey, PREFIX } from "../helpers/commands.ts";
import { Fleet, fleetRelease } from "../helpers/fleet.ts";
import { type Received, Watch } from "../helpers/mqtt-watch.ts";
import { pinKey } from "../helpers/pins.ts";
import { RabbitCluster, rabbitmqInstalled } from "../helpers/rabbitmq.ts";
import { fakeAgent } from "../helpers/releases.ts";
import { tempDir } from "../helpers/temp.ts";

const DEVICES = ["cam-1", "cam-2"];

describe("a RabbitMQ 3.10 cluster of two nodes: devices on one, the operator on the other", {
  skip: rabbitmqInstalled() ? false : "rabbitmq-server is not installed (scripts/install-deps.sh)",
}, () => {
  const dir = tempDir("outpost-rabbitmq-test-");
  const ops = operatorKey();
  const releaseKey = generateKeys();
  const keyFile = join(dir, "ops.key");
  const pins = join(dir, "known_devices");
  let cluster: RabbitCluster;
  let watch: Watch;
  const agents = new Map<string, AgentProcess>();
  /** ctl on the second node (the first given as the one to fail over to). */
  const ctl = (args: string[]) =>
    runCli(["ctl", ...args, "--broker", brokerList(1), "--key", keyFile, "--known-devices", pins]);
  const brokerList = (first: number) =>
    [cluster.nodes[first]?.url, cluster.nodes[1 - first]?.url].filter(Boolean).join(",");

  const telemetryOf = (id: string) => (m: Received) => m.topic === `${PREFIX}/${id}/telemetry`;

  before(async () => {
    writeFileSync(keyFile, ops.privatePem, { mode: 0o600 });
    cluster = await RabbitCluster.start(2);
    const [a, b] = cluster.nodes;
    watch = await Watch.open(b?.mqttPort ?? 0, [`${PREFIX}/+/telemetry`, `${PREFIX}/+/status`], {
      protocolVersion: 4,
    });
    for (const id of DEVICES) {
      agents.set(
        id,
        AgentProcess.run(sourceCommand(), {
          device: { id, groups: ["line-3"] },
          // MQTT 5 by default: the agent must find its way to 3.1.1 by itself.
          mqtt: { url: a?.url, failover: [b?.url], reconnectMin: "100ms", reconnectMax: "1s", keepalive: "5s" },
          telemetry: { interval: "500ms" },
          commands: { trustedKeys: [{ name: "ops", key: ops.publicText, allow: ["*"] }] },
          update: { trustedKeys: [releaseKey.publicText], maxSize: "16MiB", progressInterval: "200ms" },
        }),
      );
    }
    for (const [id, agent] of agents) {
      await watch.waitFor(telemetryOf(id), 90_000, `telemetry of ${id} on the second node`);
      const pinned = await runCli(["ctl", "trust", id, "--public-key", join(agent.dir, "state", "device.pub")], {
        OUTPOST_CTL_KNOWN_DEVICES: pins,
        OUTPOST_CTL_BROKER: cluster.nodes[1]?.url ?? "",
      });
      assert.equal(pinned.code, 0, pinned.err);
    }
  });
  after(async () => {
    if (process.env.DEBUG_RABBITMQ)
      for (const l of [...agents.values()].flatMap((a) => a.stdout.items))
        if (!l.includes('"level":30')) console.log(l.slice(0, 400));
    for (const a of agents.values()) await a.cleanup();
    await watch?.close();
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("the agents fall back to MQTT 3.1.1 on their own; their telemetry reaches the other node", async () => {
    for (const id of DEVICES) await watch.waitFor(telemetryOf(id), 1000, `telemetry of ${id} on the second node`);
    const fellBack = agents
      .get("cam-1")
      ?.logs()
      .find((l) => l.msg === "mqtt connected");
    assert.equal(fellBack?.protocolVersion, 4);
  });

  it("ctl broker check says what this broker does", async () => {
    const r = await runCli(["ctl", "broker", "check", "--json", "--broker", cluster.nodes[1]?.url ?? ""]);
    assert.equal(r.code, 0, r.err);
    const found = JSON.parse(r.out) as Record<string, { value: unknown }>;
    assert.deepEqual(Object.fromEntries(Object.entries(found).map(([k, f]) => [k, f.value])), {
      mqtt5: false,
      connected: "3.1.1",
      maxPacketSize: null,
      dotsInTopicLevels: "split",
      retainedThroughWildcards: false,
      will: true,
      persistentSessions: true,
      aclConfinesDevice: null,
    });
  });

  it("ctl devices finds both devices by a signed ping, and says that is what it used", async () => {
    const r = await ctl(["devices", "--json"]);
    assert.equal(r.code, 0, r.err);
    const rows = r.out
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.deepEqual(
      rows.map((row) => [row.id, row.state, row.key, row.presence]),
      DEVICES.map((id) => [id, "online", "pinned", "ping"]),
    );
    assert.match(r.err, /presence from devices that answered a signed ping .*only to exact subscriptions/);
  });

  it("a command with a dot in its name, across the nodes, without --wait; a group call reaches both", async () => {
    const got = await ctl(["call", "cam-1", "config.get", "--params", '{"path":"telemetry.interval"}']);
    assert.equal(got.code, 0, got.err);
    assert.equal(JSON.parse(got.out).value, "500ms");
    const group = await ctl(["call", "--group", "line-3", "ping", "--expect", "2", "--timeout", "20s"]);
    assert.equal(group.code, 0, group.err);
    assert.deepEqual(
      group.out
        .trim()
        .split("\n")
        .map((l) => l.split(/\s+/)[0])
        .sort(),
      DEVICES,
    );
  });

  it("a device id with a dot is refused with the reason, before anything is sent", async () => {
    const r = await ctl(["call", "cam.9", "ping", "--wait", "--timeout", "2s"]);
    assert.equal(r.code, 1);
    assert.match(r.err, /device cam\.9 has a dot, which this broker turns into a topic level separator/);
    // A rollout to it is refused too, before anything is frozen: its request would never arrive.
    const file = join(dir, "r0.bin");
    writeFileSync(file, fakeAgent("9.9.8", process.arch === "arm64" ? "arm64" : "x64", 64 * 1024));
    const release = join(dir, "r0");
    makeRelease({ file, privateKey: parsePrivateKey(releaseKey.privatePem), out: release, kind: "agent", now: 1 });
    const rollout = await ctl(["rollout", release, "--devices", "cam.9,line-a", "--dry-run"]);
    assert.equal(rollout.code, 1, rollout.out);
    assert.match(rollout.err, /device cam\.9 has a dot, which this broker turns into a topic level separator/);
    assert.doesNotMatch(rollout.out, /wave 1/);
  });

  it("ctl update stages a release on the group: its chunks go over MQTT from one node to the other", async () => {
    const file = join(dir, "r1.bin");
    writeFileSync(file, fakeAgent("9.9.9", process.arch === "arm64" ? "arm64" : "x64", 4 * 1024 * 1024));
    const release = join(dir, "r1");
    makeRelease({ file, privateKey: parsePrivateKey(releaseKey.privatePem), out: release, kind: "agent", now: 1 });
    const r = await ctl(["update", "--group", "line-3", "--expect", "2", release, "--until", "staged", "--json"]);
    assert.equal(r.code, 0, r.err + r.out);
    const outcomes = r.out
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => "outcome" in l);
    assert.deepEqual(
      outcomes.map((l) => [l.device, l.outcome]).sort(),
      DEVICES.map((id) => [id, "staged"]),
    );
  });

  it("a rollout driven from the other node: presence and arch from the devices' signed answers", async () => {
    // Simulated devices (test/helpers/fleet.ts: the real agent code, a scripted installer) on the first node;
    // the driver on the second sees none of their retained statuses.
    const sims = ["sim-1", "sim-2", "sim-3", "sim-4"];
    const rel = generateKeys();
    const fleet = new Fleet(sims, {
      dir,
      brokerUrl: cluster.nodes[0]?.url ?? "",
      operatorKey: ops.publicText,
      releaseKey: rel.publicText,
      running: { version: "1.0.0", sha256: "a".repeat(64) },
    });
    try {
      await fleet.start();
      for (const d of fleet.devices) await pinKey(pins, brokerList(1), d.id, d.publicKeyFile);
      const release = fleetRelease(dir, "1.1.0", rel.privatePem);
      const db = ["--rollouts", join(dir, "rollouts.db")];
      // A driver that never sees the devices waits for ever: the test fails after 120 s instead.
      const args = ["rollout", release.dir, "--devices", sims.join(","), "--waves", "1,100%", "--soak", "1s"];
      const flags = ["--broker", brokerList(1), "--key", keyFile, "--known-devices", pins, ...db];
      const run = await Promise.race([
        runCli(["ctl", ...args, ...flags], {}, 90_000),
        new Promise<never>((_, reject) =>
          setTimeout(() => reject(new Error("the rollout did not end in 120 s")), 120_000).unref(),
        ),
      ]);
      assert.equal(run.code, 0, run.err + run.out);
      const list = await ctl(["rollout", "list", "--json", ...db]);
      const [made] = list.out
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as { id: string; state: string });
      const status = await ctl(["rollout", "status", made?.id ?? "", "--json", "--all", ...db]);
      const s = JSON.parse(status.out) as { state: string; devices: { device: string; state: string }[] };
      assert.equal(s.state, "completed");
      assert.deepEqual(
        s.devices.map((d) => [d.device, d.state]).sort(),
        sims.map((id) => [id, "committed"]),
      );
    } finally {
      await fleet.stop();
    }
  });

  it("the devices' node goes down: they fail over to the other, and commands reach them there", async () => {
    // Counted from before the kill: both may be back before the wait for either begins.
    const since = watch.items.length;
    await cluster.kill(0);
    for (const id of DEVICES) {
      // Its birth on the surviving node: it connected there.
      const online = (m: Received) =>
        m.topic === `${PREFIX}/${id}/status` && m.json.state === "online" && watch.items.indexOf(m) >= since;
      await watch.waitFor(online, 120_000, `${id} online again after its node went down`);
    }
    // The call may come while a device is still on its way over: it is retried until the deadline.
    for (const id of DEVICES) {
      const deadline = Date.now() + 60_000;
      let last = "";
      for (;;) {
        const r = await ctl(["call", id, "describe", "--timeout", "5s"]);
        if (r.code === 0) break;
        last = r.err;
        assert.ok(Date.now() < deadline, `no answer from ${id} on the surviving node: ${last}`);
      }
    }
  });
});
