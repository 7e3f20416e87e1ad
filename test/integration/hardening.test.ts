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
        if (protocolVersion === 4)
          await agent.waitForLog("the broker sent a packet larger than mqtt.maxPacketSize; dropping the connection");
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
});
