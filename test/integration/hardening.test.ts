// Regression tests for issue 8 (hardening) that need a whole agent process: items 4 and 12. Each failed on
// bbb3be8, the commit before the fix (see each test).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import mqtt from "mqtt";
import { AgentProcess, sourceCommand } from "../helpers/agent-process.ts";
import { operatorKey } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { type Received, Watch } from "../helpers/mqtt-watch.ts";
import { Operator, PREFIX } from "../helpers/operator.ts";

const ops = operatorKey();
const MiB = 1024 * 1024;

/** Peak and current resident memory of a process, from /proc. */
function memory(pid: number): { peak: number; rss: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kib = (name: string) => Number(new RegExp(`${name}:\\s+(\\d+) kB`).exec(status)?.[1] ?? 0) * 1024;
  return { peak: kib("VmHWM"), rss: kib("VmRSS") };
}

const online = (id: string) => (m: Received) => m.topic === `${PREFIX}/${id}/status` && m.json.state === "online";

describe("hardening: a whole agent against a real mosquitto", () => {
  let broker: Mosquitto;
  let watch: Watch;
  before(async () => {
    broker = await Mosquitto.start();
    watch = await Watch.open(broker.port, [`${PREFIX}/+/status`, `${PREFIX}/+/telemetry`]);
  });
  after(async () => {
    await watch.close();
    await broker.stop();
  });

  // Item 4: on bbb3be8 100 MB of unsigned JSON to cmd/ping took the agent's RSS to 511 MB.
  for (const protocolVersion of [5, 4] as const) {
    it(`a 64 MB unauthenticated message leaves memory low and the agent working (MQTT ${protocolVersion === 5 ? "5" : "3.1.1"})`, async (t) => {
      const id = `dev-big-${protocolVersion}`;
      const agent = AgentProcess.run(sourceCommand(), {
        device: { id },
        mqtt: { url: broker.url, protocolVersion, reconnectMin: "50ms", reconnectMax: "500ms" },
        telemetry: { interval: "1s", fullInterval: "50ms" },
        commands: { trustedKeys: [{ name: "ops", key: ops.publicText, allow: ["*"] }] },
      });
      const operator = await Operator.open(broker.port, ops);
      const attacker = await mqtt.connectAsync({ host: "127.0.0.1", port: broker.port, protocolVersion: 5 });
      try {
        await watch.waitFor(online(id), 15_000, "online");
        await operator.final(id, "ping");
        const pid = agent.child.pid as number;
        const before = memory(pid);
        const big = Buffer.alloc(64 * MiB, "x");
        big.write('{"id":"big","params":"');
        await attacker.publishAsync(`${PREFIX}/${id}/cmd/ping`, big, { qos: 1 });
        await attacker.publishAsync(`${PREFIX}/${id}/cmd/describe`, big, { qos: 0 });
        // The agent still answers, after a reconnect if the connection had to be dropped (3.1.1: a request
        // published while it reconnects is lost with its clean session, so ask again).
        let answered = false;
        for (let attempt = 0; attempt < 5 && !answered; attempt++) {
          const result = await operator.call(id, "ping", undefined, { timeoutMs: 3000 });
          answered = result.finals[0]?.state === "succeeded";
        }
        assert.ok(answered, "ping answered after the big messages");
        // 3.1.1 cannot announce the limit: the big messages are read past and dropped, the connection stays.
        if (protocolVersion === 4) {
          await agent.waitForLog(
            "dropped a message larger than mqtt.maxPacketSize (read past, acknowledged; the connection stays)",
          );
          assert.ok(!agent.logs().some((l) => l.msg === "mqtt connection lost"), "the connection was dropped");
        }
        const afterwards = memory(pid);
        const growth = afterwards.peak - before.peak;
        t.diagnostic(`peak RSS ${(before.peak / MiB).toFixed(0)} -> ${(afterwards.peak / MiB).toFixed(0)} MiB`);
        assert.ok(growth < 48 * MiB, `peak RSS grew ${(growth / MiB).toFixed(0)} MiB`);
        assert.equal(agent.child.exitCode, null);
      } finally {
        await attacker.endAsync(true);
        await operator.close();
        await agent.cleanup();
      }
    });
  }

  it("3.1.1 persistent session: a 3 MB command queued while the agent was away is dropped once, not a reconnect loop (issue 22, item 7)", async () => {
    const id = "dev-queued-big";
    const config = {
      device: { id },
      mqtt: {
        url: broker.url,
        protocolVersion: 4,
        persistentSession311: true,
        reconnectMin: "50ms",
        reconnectMax: "500ms",
      },
      commands: { trustedKeys: [{ name: "ops", key: ops.publicText, allow: ["*"] }] },
    };
    const first = AgentProcess.run(sourceCommand(), config);
    const dir = first.dir;
    await watch.waitForNext(online(id), 15_000, "online");
    await first.stop("SIGTERM");
    // While it is away: a 3 MB request, queued by the broker for its session (QoS 1).
    const sender = await mqtt.connectAsync({ host: "127.0.0.1", port: broker.port, protocolVersion: 4 });
    const operator = await Operator.open(broker.port, ops);
    const second = AgentProcess.run(sourceCommand(), config, {}, dir);
    try {
      const big = Buffer.alloc(3 * MiB, "x");
      big.write('{"id":"queued-big","params":"');
      await sender.publishAsync(`${PREFIX}/${id}/cmd/ping`, big, { qos: 1 });
      await second.waitForLog(
        "dropped a message larger than mqtt.maxPacketSize (read past, acknowledged; the connection stays)",
        20_000,
      );
      const ping = await operator.call(id, "ping", undefined, { timeoutMs: 10_000 });
      assert.equal(ping.finals[0]?.state, "succeeded");
      // Acknowledged: a reconnect does not bring it back, and the link never blamed a second agent.
      await second.stop("SIGTERM");
      const third = AgentProcess.run(sourceCommand(), config, {}, dir);
      try {
        await third.waitForLog("mqtt connected", 15_000);
        const again = await operator.call(id, "ping", undefined, { timeoutMs: 10_000 });
        assert.equal(again.finals[0]?.state, "succeeded");
        assert.ok(!third.logs().some((l) => String(l.msg).startsWith("dropped a message larger")), "delivered again");
      } finally {
        await third.cleanup();
      }
      assert.ok(!second.logs().some((l) => String(l.msg).includes("second agent")), "a takeover was blamed");
      assert.ok(!second.logs().some((l) => l.msg === "mqtt connection lost"), "the connection was dropped");
    } finally {
      await sender.endAsync(true);
      await operator.close();
      await second.cleanup();
    }
  });
});
