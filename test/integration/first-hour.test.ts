// Issue 10 (the first hour): behaviour a new operator meets, against a real mosquitto.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { AgentProcess, sourceCommand } from "../helpers/agent-process.ts";
import { operatorKey, PREFIX } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { type Received, Watch } from "../helpers/mqtt-watch.ts";
import { Operator } from "../helpers/operator.ts";
import { FaultProxy } from "../helpers/proxy.ts";

const ops = operatorKey();
const online = (id: string) => (m: Received) => m.topic === `${PREFIX}/${id}/status` && m.json.state === "online";

describe("first hour", () => {
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

  // Item 11: on bbb3be8 the agent connected with a clean session, so a request sent while it was offline for a
  // few seconds was lost and the operator saw TIMEOUT.
  it("a request sent during a 5 s outage runs after the reconnect; one that expired meanwhile is refused", async () => {
    const proxy = await FaultProxy.start(broker.port);
    const agent = AgentProcess.run(sourceCommand(), {
      device: { id: "dev-offline" },
      mqtt: { url: `mqtt://127.0.0.1:${proxy.port}`, reconnectMin: "200ms", reconnectMax: "500ms" },
      telemetry: { interval: "1s", fullInterval: "50ms" },
      // A second of skew, so that a request valid for one second has expired after the five-second outage.
      commands: { trustedKeys: [{ name: "ops", key: ops.publicText, allow: ["*"] }], clockSkew: "1s" },
    });
    try {
      await watch.waitFor(online("dev-offline"), 15_000, "online");
      for (let outage = 0; outage < 2; outage++) {
        const lost = agent.stdout.waitForNext((l) => l.includes('"msg":"mqtt connection lost"'), 10_000, "lost");
        proxy.down();
        await lost;
        const waiting = operator.call("dev-offline", "ping", undefined, { timeoutMs: 20_000 });
        const expiring = operator.call("dev-offline", "ping", undefined, { timeoutMs: 20_000, validityMs: 1000 });
        await new Promise((resolve) => setTimeout(resolve, 5000));
        proxy.up();
        const [ran, expired] = await Promise.all([waiting, expiring]);
        assert.equal(ran.finals[0]?.state, "succeeded", `outage ${outage + 1}`);
        assert.equal(expired.finals[0]?.error?.code, "COMMAND_EXPIRED", `outage ${outage + 1}`);
      }
    } finally {
      await agent.cleanup();
      await proxy.close();
    }
  });

  // Item 12: on bbb3be8 the outbox published as soon as MQTT.js was connected, before the subscriptions and the
  // birth were done: a backlog went out ahead of the online status.
  it("in each session the online status reaches subscribers before any telemetry, even with a backlog", async () => {
    const proxy = await FaultProxy.start(broker.port);
    proxy.down();
    // While the subscription round trip is slow, telemetry keeps being produced: none of it may go first.
    proxy.delaySuback(300);
    const agent = AgentProcess.run(sourceCommand(), {
      device: { id: "dev-birth" },
      mqtt: { url: `mqtt://127.0.0.1:${proxy.port}`, reconnectMin: "100ms", reconnectMax: "200ms" },
      telemetry: { interval: "50ms", fullInterval: "50ms" },
    });
    try {
      await agent.waitForLog("agent starting");
      for (let round = 0; round < 3; round++) {
        // Telemetry piles up while the device cannot connect.
        await new Promise((resolve) => setTimeout(resolve, 1000));
        const from = watch.items.length;
        proxy.up();
        const status = await watch.waitForNext(online("dev-birth"), 10_000, "online");
        const session = status.json.session as string;
        const mine = watch.items.slice(from).filter((m) => m.json.session === session);
        assert.equal(mine[0]?.topic, `${PREFIX}/dev-birth/status`, `round ${round + 1}: ${mine[0]?.topic} came first`);
        proxy.down();
      }
    } finally {
      await agent.cleanup();
      await proxy.close();
    }
  });
});
