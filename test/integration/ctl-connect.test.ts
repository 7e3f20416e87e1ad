// Issue 22, item 6: `ctl` against a broker that never completes a connection (RabbitMQ 3.10 closes an MQTT 5
// CONNECT without a CONNACK) printed nothing and exited 0 in about 200 ms. Now: 3.1.1 is tried next, and a
// connection that never completes exits 69 with the reason.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { generateKeys } from "../../src/commands/keys.ts";
import { AgentProcess, sourceCommand } from "../helpers/agent-process.ts";
import { PREFIX } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { Watch } from "../helpers/mqtt-watch.ts";
import { noMqtt5Broker } from "../helpers/no-mqtt5.ts";
import { freePort } from "../helpers/ports.ts";

/** Runs `outpost ctl ...` from the checkout as its own process: how it exits is what is tested. */
function ctl(args: string[], env: Record<string, string> = {}) {
  const [cmd, ...pre] = sourceCommand();
  const child = spawn(cmd ?? "node", [...pre, "ctl", ...args], {
    env: { PATH: process.env.PATH ?? "", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout.on("data", (d: Buffer) => {
    out += d.toString();
  });
  child.stderr.on("data", (d: Buffer) => {
    err += d.toString();
  });
  return new Promise<{ code: number | null; out: string; err: string }>((resolve) =>
    child.on("exit", (code) => resolve({ code, out, err })),
  );
}

describe("ctl when the broker never completes a connection", () => {
  let broker: Mosquitto;
  let silent: Server;
  let noMqtt5: Awaited<ReturnType<typeof noMqtt5Broker>>;
  let silentPort: number;
  let noMqtt5Port: number;
  const dir = mkdtempSync(join(tmpdir(), "outpost-ctl-connect-"));
  const key = join(dir, "ops.key");
  writeFileSync(key, generateKeys().privatePem, { mode: 0o600 });

  before(async () => {
    broker = await Mosquitto.start();
    // Closes every connection as soon as it says anything.
    silent = createServer((s) => s.once("data", () => s.destroy()));
    // Like RabbitMQ 3.10: an MQTT 5 CONNECT is closed unanswered; 3.1.1 goes through to mosquitto.
    noMqtt5 = await noMqtt5Broker(broker.port, "close");
    noMqtt5Port = noMqtt5.port;
    silentPort = await freePort();
    await new Promise<void>((r) => silent.listen(silentPort, "127.0.0.1", () => r()));
  });
  after(async () => {
    silent.close();
    await noMqtt5.close();
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("a broker that closes every CONNECT unanswered: devices, watch and call exit 69 and say why", async () => {
    for (const args of [["devices"], ["watch"], ["call", "dev-1", "ping", "--wait", "--timeout", "2s", "--key", key]]) {
      const r = await ctl([...args, "--broker", `mqtt://127.0.0.1:${silentPort}`]);
      assert.equal(r.code, 69, `${args[0]}: ${r.err}`);
      assert.match(r.err, /no connection to the broker .*closed the connection without answering CONNECT/);
    }
  });

  it("the agent, on a broker that closes MQTT 5 connects unanswered, falls back to 3.1.1 (issue 26, part C)", async () => {
    // Like RabbitMQ 3.10: on 57975c7 the agent tried MQTT 5 again and again and never connected.
    const watch = await Watch.open(broker.port, [`${PREFIX}/dev-nomqtt5/status`]);
    const agent = AgentProcess.run(sourceCommand(), {
      device: { id: "dev-nomqtt5" },
      mqtt: { url: `mqtt://127.0.0.1:${noMqtt5Port}`, reconnectMin: "50ms", reconnectMax: "500ms" },
    });
    try {
      const online = await watch.waitFor((m) => m.json.state === "online", 20_000, "online over 3.1.1");
      assert.equal(online.json.protocolVersion, 4);
      await agent.waitForLog(
        "broker closed an MQTT 5 connect unanswered; connected with MQTT 3.1.1 (MQTT 5 first again next time)",
      );
    } finally {
      await agent.cleanup();
      await watch.close();
    }
  });

  it("nothing listening: exit 69", async () => {
    const r = await ctl(["devices", "--broker", `mqtt://127.0.0.1:${await freePort()}`]);
    assert.equal(r.code, 69, r.err);
    assert.match(r.err, /ECONNREFUSED/);
  });

  it("a broker that closes only MQTT 5: 3.1.1 is used; --protocol 5 says it cannot; a bad --protocol is a usage error", async () => {
    const auto = await ctl(["devices", "--broker", `mqtt://127.0.0.1:${noMqtt5Port}`]);
    assert.equal(auto.code, 0, auto.err);
    const five = await ctl(["devices", "--broker", `mqtt://127.0.0.1:${noMqtt5Port}`], { OUTPOST_CTL_PROTOCOL: "5" });
    assert.equal(five.code, 69, five.err);
    assert.match(five.err, /\(MQTT 5\)/);
    const four = await ctl(["devices", "--broker", `mqtt://127.0.0.1:${noMqtt5Port}`, "--protocol", "4"]);
    assert.equal(four.code, 0, four.err);
    const bad = await ctl(["devices", "--protocol", "6"]);
    assert.equal(bad.code, 64, bad.err);
  });
});
