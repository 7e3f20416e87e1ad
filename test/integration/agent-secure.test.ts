import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Aedes } from "aedes";
import { AgentProcess, sourceCommand } from "../helpers/agent-process.ts";
import { PREFIX } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { Watch } from "../helpers/mqtt-watch.ts";
import { clientCertListener, clientFiles, clientTlsOptions, makePki } from "../helpers/pki.ts";
import { freePort } from "../helpers/ports.ts";

const base = { reconnectMin: "50ms", reconnectMax: "500ms", keepalive: "5s" };

describe("secured links", () => {
  let pki: string;
  before(() => {
    pki = mkdtempSync(join(tmpdir(), "outpost-pki-"));
    makePki(pki);
  });
  after(() => rmSync(pki, { recursive: true, force: true }));

  it("connects over TLS with a CA and a client certificate, and refuses a server it cannot verify", async () => {
    const broker = await Mosquitto.start({ listener: clientCertListener(pki) });
    const tls = clientFiles(pki);
    const watch = await Watch.open(broker.port, [`${PREFIX}/#`], clientTlsOptions(pki));
    const good = AgentProcess.run(sourceCommand(), {
      device: { id: "dev-tls" },
      mqtt: { url: `mqtts://127.0.0.1:${broker.port}`, ...tls, ...base },
      telemetry: { interval: "200ms", fullInterval: "50ms" },
    });
    // Same broker, but the agent does not trust its CA: it must not connect.
    const untrusting = AgentProcess.run(sourceCommand(), {
      device: { id: "dev-untrusting" },
      mqtt: { url: `mqtts://127.0.0.1:${broker.port}`, cert: tls.cert, key: tls.key, ...base },
    });
    try {
      const online = await watch.waitFor((m) => m.topic === `${PREFIX}/dev-tls/status`, 15_000, "online over TLS");
      assert.equal(online.json.state, "online");
      await watch.waitFor((m) => m.topic === `${PREFIX}/dev-tls/telemetry`, 10_000, "telemetry over TLS");
      const failed = await untrusting.waitForLog("mqtt connect failed");
      assert.match(failed, /certificate/i);
      assert.ok(!watch.items.some((m) => m.topic.includes("dev-untrusting")));
      assert.deepEqual(await good.stop("SIGTERM"), { code: 0, signal: null });
    } finally {
      await good.cleanup();
      await untrusting.cleanup();
      await watch.close();
      await broker.stop();
    }
  });

  it("authenticates with a username and a password file", async () => {
    const passwords = join(pki, "passwd");
    execFileSync("mosquitto_passwd", ["-b", "-c", passwords, "device", "s3cret-pass"]);
    const broker = await Mosquitto.start({
      listener: (port) => [`listener ${port} 127.0.0.1`, "allow_anonymous false", `password_file ${passwords}`],
    });
    const passwordFile = join(pki, "device.password");
    writeFileSync(passwordFile, "s3cret-pass\n");
    const watch = await Watch.open(broker.port, [`${PREFIX}/#`], { username: "device", password: "s3cret-pass" });
    const agent = AgentProcess.run(sourceCommand(), {
      device: { id: "dev-auth" },
      mqtt: { url: broker.url, username: "device", passwordFile, ...base },
    });
    const wrong = AgentProcess.run(sourceCommand(), {
      device: { id: "dev-wrong" },
      mqtt: { url: broker.url, username: "device", password: "nope", ...base },
    });
    try {
      const online = await watch.waitFor((m) => m.topic === `${PREFIX}/dev-auth/status`, 15_000, "online with auth");
      assert.equal(online.json.state, "online");
      const refused = await wrong.waitForLog("mqtt connect failed");
      assert.match(refused, /Not authorized|Bad User Name or Password/i);
      // The password never appears in the agent's own output.
      assert.ok(!agent.stdout.items.some((l) => l.includes("s3cret-pass")));
    } finally {
      await agent.cleanup();
      await wrong.cleanup();
      await watch.close();
      await broker.stop();
    }
  });

  it("falls back to MQTT 3.1.1 when the broker refuses MQTT 5 (aedes)", async () => {
    const aedes = await Aedes.createBroker();
    const server: Server = createServer(aedes.handle);
    const port = await freePort();
    await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", () => resolve()));
    const watch = await Watch.open(port, [`${PREFIX}/#`], { protocolVersion: 4 });
    const agent = AgentProcess.run(sourceCommand(), {
      device: { id: "dev-fallback" },
      mqtt: { url: `mqtt://127.0.0.1:${port}`, protocolVersion: 5, ...base },
      telemetry: { interval: "200ms", fullInterval: "50ms" },
    });
    try {
      const online = await watch.waitFor((m) => m.topic === `${PREFIX}/dev-fallback/status`, 15_000, "online");
      assert.equal(online.json.state, "online");
      assert.equal(online.json.protocolVersion, 4);
      await watch.waitFor((m) => m.topic === `${PREFIX}/dev-fallback/telemetry`, 10_000, "telemetry");
      assert.ok(agent.logs().some((l) => l.msg === "broker refused MQTT 5; falling back to MQTT 3.1.1"));
      assert.deepEqual(await agent.stop("SIGTERM"), { code: 0, signal: null });
    } finally {
      await agent.cleanup();
      await watch.close();
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});
