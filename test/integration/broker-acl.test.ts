// Issue 25 items 4-6: the shipped mosquitto configuration (scripts/mosquitto/outpost.conf) with the files
// `ctl enroll` writes, run by a real mosquitto. Before it, every device shared one broker login and one
// device's credentials could publish as, and read the commands of, every other device.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import mqtt, { type IClientOptions } from "mqtt";
import { parsePrivateKey } from "../../src/commands/keys.ts";
import { makeRelease } from "../../src/ota/release.ts";
import { AgentProcess, ROOT, sourceCommand } from "../helpers/agent-process.ts";
import { runCli } from "../helpers/cli.ts";
import { operatorKey, PREFIX } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { type Received, Watch } from "../helpers/mqtt-watch.ts";
import { makePki } from "../helpers/pki.ts";
import { freePort } from "../helpers/ports.ts";
import { fakeAgent } from "../helpers/releases.ts";
import { tempDir } from "../helpers/temp.ts";

const dir = tempDir("outpost-broker-acl-");
const brokerDir = join(dir, "broker");
const out = join(dir, "enroll");
const ops = operatorKey();
const releaseKey = operatorKey();
writeFileSync(join(dir, "ops.key"), ops.privatePem, { mode: 0o600 });
const pins = join(dir, "known_devices");

/** The shipped file, with its paths and ports made this test's: nothing else changed. */
function shippedConfig(devicePort: number, operatorPort: number): string[] {
  const text = readFileSync(join(ROOT, "scripts", "mosquitto", "outpost.conf"), "utf8")
    .replaceAll("/etc/mosquitto/outpost/", `${brokerDir}/`)
    .replace("listener 8883", `listener ${devicePort} 127.0.0.1`)
    .replace("listener 8884", `listener ${operatorPort} 127.0.0.1`);
  // The test's broker keeps its state in its own directory (the helper sets it).
  return text.split("\n").filter((l) => !l.startsWith("persistence_location"));
}

describe("the shipped broker configuration, with enrolled devices (issue 25)", () => {
  let broker: Mosquitto;
  let devicePort: number;
  let operatorPort: number;
  let watch: Watch;
  const agents = new Map<string, AgentProcess>();
  const tls = () => ({ protocol: "mqtts" as const, ca: readFileSync(join(dir, "ca.pem")), host: "127.0.0.1" });
  const login = (name: string) => ({
    username: name,
    password: readFileSync(join(out, name, "mqtt-password"), "utf8").trim(),
  });
  const ctl = (args: string[], broker = `mqtts://127.0.0.1:${operatorPort}`) =>
    runCli([
      "ctl",
      ...args,
      "--broker",
      broker,
      ...(broker.startsWith("mqtts") ? ["--ca", join(dir, "ca.pem"), "--username", "ops"] : []),
      ...(broker.startsWith("mqtts") ? ["--password-file", join(out, "ops", "mqtt-password")] : []),
      "--known-devices",
      pins,
      ...(["call", "update", "logs"].includes(args[0] ?? "") ? ["--key", join(dir, "ops.key")] : []),
    ]);
  const online = (id: string) => (m: Received) => m.topic === `${PREFIX}/${id}/status` && m.json.state === "online";

  before(async () => {
    makePki(dir);
    devicePort = await freePort();
    operatorPort = await freePort();
    const enroll = await runCli(
      ["ctl", "enroll", "dev-a", "dev-b", "--group", "line-1", "--broker-dir", brokerDir, "--out", out],
      {},
    );
    assert.equal(enroll.code, 0, enroll.err);
    // A device of no group, whose login plays the compromised device.
    const x = await runCli(["ctl", "enroll", "dev-x", "--broker-dir", brokerDir, "--out", out], {});
    assert.equal(x.code, 0, x.err);
    const operator = await runCli(["ctl", "enroll", "--operator", "ops", "--broker-dir", brokerDir, "--out", out], {});
    assert.equal(operator.code, 0, operator.err);
    writeFileSync(join(brokerDir, "server.pem"), readFileSync(join(dir, "server.pem")));
    writeFileSync(join(brokerDir, "server.key"), readFileSync(join(dir, "server.key")));
    broker = await Mosquitto.start({ port: devicePort, listener: () => shippedConfig(devicePort, operatorPort) });
    watch = await Watch.open(operatorPort, [`${PREFIX}/#`, "homeassistant/#"], { ...tls(), ...login("ops") });
    for (const id of ["dev-a", "dev-b"]) {
      agents.set(
        id,
        AgentProcess.run(sourceCommand(), {
          device: { id, groups: ["line-1"] },
          mqtt: {
            url: `mqtts://127.0.0.1:${devicePort}`,
            ca: join(dir, "ca.pem"),
            username: id,
            passwordFile: join(out, id, "mqtt-password"),
            reconnectMin: "50ms",
            reconnectMax: "500ms",
          },
          telemetry: { interval: "300ms", fullInterval: "50ms" },
          commands: { trustedKeys: [{ name: "ops", key: ops.publicText, allow: ["*"] }] },
          update: { trustedKeys: [releaseKey.publicText], maxSize: "16MiB", progressInterval: "100ms" },
          ...(id === "dev-b" ? { homeassistant: { discovery: true } } : {}),
        }),
      );
    }
    for (const [id, agent] of agents) {
      await watch.waitFor(online(id), 20_000, `${id} online`);
      const pinned = await ctl(["trust", id, "--public-key", join(agent.dir, "state", "device.pub")]);
      assert.equal(pinned.code, 0, pinned.err);
    }
  });
  after(async () => {
    for (const a of agents.values()) await a.cleanup();
    await watch?.close();
    await broker?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("the broker's files are readable by the broker after it drops root; enrolling again keeps the groups", async () => {
    // Review of issue 25: 0640 root:root password files stopped every login at the next reload, and an ACL
    // made unreadable by a umask was dropped at a reload (mosquitto 2.0.11 then ran with no ACL at all).
    // The broker's group, where the broker package made one (Debian's does); the modes hold either way.
    let group: string | undefined;
    try {
      group = execFileSync("getent", ["group", "mosquitto"], { encoding: "utf8" }).split(":")[2];
    } catch {
      group = undefined;
    }
    for (const [file, mode] of [
      ["devices.passwd", 0o640],
      ["devices.acl", 0o644],
      ["operators.passwd", 0o640],
      ["operators.acl", 0o644],
    ] as const) {
      const st = statSync(join(brokerDir, file));
      assert.equal(st.mode & 0o777, group === undefined && file.endsWith(".passwd") ? 0o644 : mode, file);
      if (group !== undefined) assert.equal(String(st.gid), group, file);
    }
    // dev-x's new password is in the files only: the broker keeps the old one until the revoke test reloads it.
    const again = await runCli(["ctl", "enroll", "dev-x", "--broker-dir", brokerDir, "--out", join(dir, "again")], {});
    assert.equal(again.code, 0, again.err);
    assert.match(
      readFileSync(join(brokerDir, "devices.acl"), "utf8"),
      /^user dev-a\ntopic read outpost\/v1\/_group\/line-1\/cmd\/\+$/m,
    );
  });

  it("the agent and ctl work unchanged: telemetry, commands, groups, OTA over MQTT, Home Assistant", async () => {
    await watch.waitFor((m) => m.topic === `${PREFIX}/dev-a/telemetry`, 10_000, "dev-a's telemetry");
    await watch.waitFor(
      (m) => m.topic.startsWith("homeassistant/") && m.topic.includes("/outpost_dev-b/"),
      10_000,
      "dev-b's discovery",
    );
    const ping = await ctl(["call", "dev-a", "ping"]);
    assert.equal(ping.code, 0, ping.err);
    const group = await ctl(["call", "line-1", "ping", "--group", "--expect", "2"]);
    assert.equal(group.code, 0, group.err);
    assert.match(group.out, /^dev-a {2}succeeded/m);
    assert.match(group.out, /^dev-b {2}succeeded/m);
    // Sealed diagnostics on P/<id>/diag: the ACL lets the device write there, the operator's login read it.
    const logs = await ctl(["logs", "dev-a", "--json", "--limit", "3"]);
    assert.equal(logs.code, 0, logs.err);
    assert.equal(logs.out.trim().split("\n").length, 3);
    const file = join(dir, "r.bin");
    writeFileSync(file, fakeAgent("9.9.9", process.arch === "arm64" ? "arm64" : "x64", 256 * 1024));
    const release = join(dir, "r");
    makeRelease({ file, privateKey: parsePrivateKey(releaseKey.privatePem), out: release, kind: "agent", now: 1 });
    const update = await ctl(["update", "dev-a", release, "--until", "staged", "--timeout", "60s"]);
    assert.equal(update.code, 0, update.err + update.out);
    assert.match(update.out, /^dev-a: staged, [\d.]+ MiB served over MQTT$/m);
  });

  it("with device credentials, nothing published on another device's topics is delivered, and its commands are not read", async () => {
    // dev-b's client ids (the agent's own, and its username), from dev-x's login: the broker uses the username,
    // so dev-b keeps its session (without use_username_as_clientid it was taken over and dev-b looked lost).
    for (const clientId of ["outpost-dev-b", "dev-b"]) {
      const thief = await mqtt.connectAsync({
        ...tls(),
        port: devicePort,
        protocolVersion: 4,
        clientId,
        ...login("dev-x"),
        reconnectPeriod: 0,
      });
      await thief.endAsync(true).catch(() => {});
    }
    // dev-x: enrolled, no agent (its login would otherwise take the agent's session over: same client id).
    const x = await mqtt.connectAsync({ ...tls(), port: devicePort, protocolVersion: 4, ...login("dev-x") });
    const got: string[] = [];
    x.on("message", (topic) => got.push(topic));
    try {
      await x.subscribeAsync([`${PREFIX}/dev-b/cmd/#`, `${PREFIX}/_group/line-1/cmd/#`, `${PREFIX}/#`], { qos: 1 });
      const forged = JSON.stringify({ state: "committed", version: "9.9.9" });
      for (const t of ["status", "telemetry", "cmd/ping/reply", "update", "reply/ctl-1", "alarms/x/state"]) {
        await x.publishAsync(`${PREFIX}/dev-b/${t}`, forged, { qos: 1, retain: t === "status" });
      }
      await x.publishAsync(`homeassistant/sensor/outpost_dev-b/cpu/config`, "{}", { qos: 1, retain: true });
      // Its own topic, last: once the operators see it, anything before it from dev-x would have come first.
      await x.publishAsync(`${PREFIX}/dev-x/events/marker`, "{}", { qos: 1 });
      await watch.waitFor((m) => m.topic === `${PREFIX}/dev-x/events/marker`, 10_000, "dev-x's own message");
      const forgedSeen = watch.items.filter(
        (m) => m.text === forged || (m.topic.startsWith("homeassistant/") && m.text === "{}"),
      );
      assert.deepEqual(forgedSeen, [], "delivered from dev-x's login on dev-b's topics");

      // A command to dev-b and to the group, then one to dev-x: dev-x's login reads only its own.
      const call = await ctl(["call", "dev-b", "ping"]);
      assert.equal(call.code, 0, call.err);
      const group = await ctl(["call", "line-1", "ping", "--group", "--expect", "2"]);
      assert.equal(group.code, 0, group.err);
      await watch.client.publishAsync(`${PREFIX}/dev-x/cmd/marker`, "{}", { qos: 1 });
      await waitUntil(() => got.includes(`${PREFIX}/dev-x/cmd/marker`), 10_000);
      assert.deepEqual(
        got.filter((t) => !t.startsWith(`${PREFIX}/dev-x/`)),
        [],
        "dev-x's login received other devices' or its non-groups' messages",
      );
      // dev-b was never taken over: no will, no status but online since it started.
      assert.deepEqual(
        watch.items.filter((m) => m.topic === `${PREFIX}/dev-b/status` && m.json.state !== "online"),
        [],
      );
    } finally {
      await x.endAsync(true);
    }
  });

  it("ctl broker check, given a device's login on the devices' listener, finds that the ACL confines it", async () => {
    // Issue 26, part C. dev-x: enrolled, no agent (the check's login takes the session of its username).
    const r = await ctl([
      "broker",
      "check",
      "--json",
      "--device-username",
      "dev-x",
      "--device-password-file",
      join(out, "dev-x", "mqtt-password"),
      "--device-broker",
      `mqtts://127.0.0.1:${devicePort}`,
    ]);
    assert.equal(r.code, 0, r.err);
    const found = JSON.parse(r.out) as Record<string, { value: unknown; note: string }>;
    assert.equal(found.aclConfinesDevice?.value, true, found.aclConfinesDevice?.note);
    assert.equal(found.dotsInTopicLevels?.value, "kept");
    assert.equal(found.retainedThroughWildcards?.value, true);
  });

  it("bridged through a second mosquitto over MQTT 3.1.1, the signatures still verify", async () => {
    const edgePort = await freePort();
    const edge = await Mosquitto.start({
      port: edgePort,
      extra: [
        "connection central",
        `address 127.0.0.1:${operatorPort}`,
        "bridge_protocol_version mqttv311",
        `bridge_cafile ${join(dir, "ca.pem")}`,
        "remote_username ops",
        `remote_password ${login("ops").password}`,
        `topic ${PREFIX}/# both 1`,
        "cleansession true",
      ],
    });
    try {
      const pinned = await ctl(
        ["trust", "dev-a", "--public-key", join(agents.get("dev-a")?.dir ?? "", "state", "device.pub")],
        edge.url,
      );
      assert.equal(pinned.code, 0, pinned.err);
      // The bridge connects in its own time: ask until the answer comes through it.
      let r = await ctl(["call", "dev-a", "ping", "--timeout", "3s", "--wait"], edge.url);
      for (let i = 0; i < 10 && r.code !== 0; i++)
        r = await ctl(["call", "dev-a", "ping", "--timeout", "3s", "--wait"], edge.url);
      assert.equal(r.code, 0, r.err);
      assert.match(r.out, /"pong": true/);
    } finally {
      await edge.stop();
    }
  });

  it("ctl revoke: the device's login is gone once the broker reloads, and so is its pin", async () => {
    const r = await ctl(["revoke", "dev-x", "--broker-dir", brokerDir]);
    assert.equal(r.code, 0, r.err);
    assert.doesNotMatch(readFileSync(join(brokerDir, "devices.passwd"), "utf8"), /^dev-x:/m);
    broker.reload();
    await waitUntil(async () => {
      try {
        const c = await mqtt.connectAsync({
          ...tls(),
          port: devicePort,
          ...login("dev-x"),
          reconnectPeriod: 0,
        } as IClientOptions);
        await c.endAsync(true);
        return false;
      } catch {
        return true;
      }
    }, 10_000);
    // The others are untouched.
    const ping = await ctl(["call", "dev-a", "ping"]);
    assert.equal(ping.code, 0, ping.err);
  });
});

async function waitUntil(ok: () => boolean | Promise<boolean>, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
