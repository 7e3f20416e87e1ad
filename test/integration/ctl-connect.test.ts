// Issue 22, item 6: `ctl` against a broker that never completes a connection (RabbitMQ 3.10 closes an MQTT 5
// CONNECT without a CONNACK) printed nothing and exited 0 in about 200 ms. Now: 3.1.1 is tried next, and a
// connection that never completes exits 69 with the reason.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { generateKeys } from "../../src/commands/keys.ts";
import { AgentProcess, sourceCommand } from "../helpers/agent-process.ts";
import { PREFIX } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { Watch } from "../helpers/mqtt-watch.ts";
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

/** The protocol level of an MQTT CONNECT packet (4: 3.1.1, 5: MQTT 5); undefined until enough of it came. */
function protocolLevel(packet: Buffer): number | undefined {
  let at = 1;
  while ((packet[at] ?? 0) & 0x80) at += 1;
  at += 1; // past the remaining length
  if (packet.length < at + 2) return undefined;
  const nameLength = packet.readUInt16BE(at);
  return packet[at + 2 + nameLength];
}

describe("ctl when the broker never completes a connection", () => {
  let broker: Mosquitto;
  let silent: Server;
  let noMqtt5: Server;
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
    noMqtt5 = createServer((s) => {
      // The CONNECT may come in pieces: read until its protocol level is there.
      let first = Buffer.alloc(0);
      const onData = (chunk: Buffer) => {
        first = Buffer.concat([first, chunk]);
        const level = protocolLevel(first);
        if (level === undefined) return;
        s.off("data", onData);
        // Held until the pipe below takes over: a CONNECT written in several pieces (MQTT.js writes the will
        // apart) would otherwise lose its rest in between, and the connect hang until its timeout.
        s.pause();
        if (level === 5) return s.destroy();
        const upstream = connect(broker.port, "127.0.0.1", () => {
          upstream.write(first);
          s.pipe(upstream).pipe(s);
        });
        upstream.on("error", () => s.destroy());
      };
      s.on("data", onData);
      s.on("error", () => s.destroy());
    });
    silentPort = await freePort();
    noMqtt5Port = await freePort();
    await new Promise<void>((r) => silent.listen(silentPort, "127.0.0.1", () => r()));
    await new Promise<void>((r) => noMqtt5.listen(noMqtt5Port, "127.0.0.1", () => r()));
  });
  after(async () => {
    silent.close();
    noMqtt5.close();
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
