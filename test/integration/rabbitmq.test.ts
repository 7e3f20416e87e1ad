// Issue 26, part C: beyond one broker. A two-node RabbitMQ 3.10 cluster started here (Debian's package), the
// devices on one node and the operator on the other. Before this, the agent never connected (MQTT 5 closed
// unanswered), commands with a dot never arrived (`.` becomes a level separator), `ctl devices` was empty
// (retained messages reach only exact subscriptions, on the node that holds them), and a node going down left
// its devices waiting for it.
import assert from "node:assert/strict";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AgentProcess, sourceCommand } from "../helpers/agent-process.ts";
import { runCli } from "../helpers/cli.ts";
import { operatorKey, PREFIX } from "../helpers/commands.ts";
import { type Received, Watch } from "../helpers/mqtt-watch.ts";
import { RabbitCluster, rabbitmqInstalled } from "../helpers/rabbitmq.ts";
import { tempDir } from "../helpers/temp.ts";

const DEVICES = ["cam-1", "cam-2"];

describe("a RabbitMQ 3.10 cluster of two nodes: devices on one, the operator on the other", {
  skip: rabbitmqInstalled() ? false : "rabbitmq-server is not installed (scripts/install-deps.sh)",
}, () => {
  const dir = tempDir("outpost-rabbitmq-test-");
  const ops = operatorKey();
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
      for (const l of agents.get("cam-1")?.stdout.items ?? [])
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
  });

  it("the devices' node goes down: they fail over to the other, and commands reach them there", async () => {
    await cluster.kill(0);
    for (const id of DEVICES) {
      // Its birth on the surviving node: it connected there.
      const online = (m: Received) => m.topic === `${PREFIX}/${id}/status` && m.json.state === "online";
      await watch.waitForNext(online, 120_000, `${id} online again after its node went down`);
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
