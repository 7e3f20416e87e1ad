// Issue 10 item 10: ctl's rough edges, through the same cli() the binary runs, against a real mosquitto.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AgentProcess, sourceCommand } from "../helpers/agent-process.ts";
import { runCli } from "../helpers/cli.ts";
import { PREFIX } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { type Received, Watch } from "../helpers/mqtt-watch.ts";

const run = runCli;

describe("ctl", () => {
  let broker: Mosquitto;
  let agent: AgentProcess;
  let dir: string;
  let key: string;
  let pins: string;
  before(async () => {
    broker = await Mosquitto.start();
    dir = mkdtempSync(join(tmpdir(), "outpost-ctl-cli-"));
    const made = await run(["keygen", "--out", join(dir, "ops")]);
    assert.equal(made.code, 0);
    key = join(dir, "ops.key");
    const pub = /ed25519:\S+/.exec(made.out)?.[0] ?? "";
    const watch = await Watch.open(broker.port, [`${PREFIX}/+/status`]);
    agent = AgentProcess.run(sourceCommand(), {
      device: { id: "dev-ctl" },
      mqtt: { url: broker.url },
      telemetry: { interval: "300ms", fullInterval: "50ms" },
      commands: { trustedKeys: [{ name: "ops", key: pub, allow: ["*"] }] },
    });
    await watch.waitFor((m: Received) => m.json.state === "online", 15_000, "online");
    await watch.close();
    // Pinned as scripts/deploy.sh pins a device: its public key, read where the agent wrote it.
    pins = join(dir, "known_devices");
    const pinned = await run([
      "ctl",
      "trust",
      "dev-ctl",
      "--public-key",
      join(agent.dir, "state", "device.pub"),
      "--broker",
      broker.url,
      "--known-devices",
      pins,
    ]);
    assert.equal(pinned.code, 0, pinned.err);
  });
  after(async () => {
    await agent.cleanup();
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("global flags work before the subcommand, as with git and kubectl", async () => {
    const r = await run([
      "ctl",
      "--broker",
      broker.url,
      "--known-devices",
      pins,
      "call",
      "--key",
      key,
      "dev-ctl",
      "ping",
    ]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /"pong": true/);
  });

  it("a call to a device with no retained status fails at once, unless --wait is given", async () => {
    // Without a retained status, a ping of 3 s decides (a status retained on another node of a cluster is not
    // seen): well before the call's own timeout.
    const r = await run(["ctl", "call", "--broker", broker.url, "--key", key, "--timeout", "60s", "nosuch", "ping"]);
    assert.equal(r.code, 1);
    assert.match(r.err, /no device nosuch has a retained status .*, nor answered a ping within 3s/);
    assert.ok(r.ms < 30_000, `${Math.round(r.ms)} ms`);
    const waited = await run([
      "ctl",
      "call",
      "--broker",
      broker.url,
      "--key",
      key,
      "--timeout",
      "1s",
      "--wait",
      "nosuch",
      "ping",
    ]);
    assert.match(waited.err, /TIMEOUT/);
  });

  it("ctl watch of a device with no retained status says so", async () => {
    const r = await run(["ctl", "watch", "--broker", broker.url, "nosuch"], {}, 2500);
    assert.match(r.err, /no device nosuch has a retained status/);
  });

  it("--key with the .pub file names the file and the fix", async () => {
    const r = await run(["ctl", "call", "--broker", broker.url, "--key", join(dir, "ops.pub"), "dev-ctl", "ping"]);
    assert.equal(r.code, 64);
    assert.match(r.err, /ops\.pub.*public key.*ops\.key/);
  });

  it("ctl devices: LAST SEEN is the latest message seen from the device, not only its status", async () => {
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const r = await run(["ctl", "devices", "--broker", broker.url, "--json", "--wait", "700ms"]);
    const row = JSON.parse(r.out.trim().split("\n")[0] ?? "{}") as { lastSeen: string };
    const age = Date.now() - Date.parse(row.lastSeen);
    assert.ok(age < 1500, `last seen ${age} ms ago, though telemetry comes every 300 ms`);
  });
});
