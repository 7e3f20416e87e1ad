import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { runCli } from "../helpers/cli.ts";

const run = runCli;

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "outpost-cli-"));
});
after(() => rmSync(dir, { recursive: true, force: true }));

describe("command line", () => {
  it("prints the version line of the contract", async () => {
    const { code, out } = await run(["--version"]);
    assert.equal(code, 0);
    assert.match(out, /^outpost \d+\.\d+\.\d+ \([0-9a-z]+\) node v24\.\d+\.\d+ linux-(x64|arm64)\n$/);
  });

  it("exits 64 on usage errors", async () => {
    assert.equal((await run([])).code, 64);
    const unknown = await run(["frobnicate"]);
    assert.equal(unknown.code, 64);
    assert.match(unknown.err, /unknown command frobnicate/);
    assert.equal((await run(["run", "--bogus"])).code, 64);
    assert.equal((await run(["run", "--log-format", "xml"])).code, 64);
    assert.equal((await run(["config"])).code, 64);
    assert.equal((await run(["config", "validate"])).code, 64);
    assert.equal((await run(["demo", "--port", "99999"])).code, 64);
    assert.equal((await run(["keygen"])).code, 64);
    assert.equal((await run(["ctl"])).code, 64);
    assert.equal((await run(["ctl", "call", "dev-1"])).code, 64);
    const noKey = await run(["ctl", "call", "dev-1", "ping"]);
    assert.equal(noKey.code, 64);
    assert.match(noKey.err, /--key FILE \(or OUTPOST_CTL_KEY, or key: in ~\/.outpost\/ctl.yaml\) is needed to sign/);
    assert.equal((await run(["ctl", "call", "dev-1", "ping", "--unsigned", "--params", "{x"])).code, 64);
    assert.equal((await run(["ctl", "call", "dev-1", "ping", "--unsigned", "--timeout", "soon"])).code, 64);
    assert.equal((await run(["ctl", "devices", "--broker", "http://x"])).code, 64);
  });

  // Issue 10 items 1 and 2: on bbb3be8 --force kept the old file's mode (a 0644 private key stayed 0644), and a
  // missing directory (~/.outpost on a fresh machine) failed with ENOENT.
  it("keygen --force writes a private key only its owner can read, whatever mode the old file had", async () => {
    const prefix = join(dir, "forced");
    assert.equal((await run(["keygen", "--out", prefix])).code, 0);
    chmodSync(`${prefix}.key`, 0o644);
    assert.equal((await run(["keygen", "--out", prefix, "--force"])).code, 0);
    assert.equal(statSync(`${prefix}.key`).mode & 0o777, 0o600);
  });

  it("keygen creates the directory of --out (mode 0700) when it does not exist", async () => {
    const prefix = join(dir, "fresh-home", ".outpost", "ops");
    const result = await run(["keygen", "--out", prefix]);
    assert.equal(result.code, 0, result.err);
    assert.equal(statSync(join(dir, "fresh-home", ".outpost")).mode & 0o777, 0o700);
    assert.equal(statSync(`${prefix}.key`).mode & 0o777, 0o600);
  });

  // Issue 10 item 3: on bbb3be8 config print showed the file's value, not the one a config.set override (kept in
  // state.dir) made the agent use.
  it("config print shows what the agent uses (file, saved overrides, environment), --sources says where from", async () => {
    const state = join(dir, "print-state");
    const path = join(dir, "print.yaml");
    writeFileSync(path, `telemetry:\n  interval: 10s\nstate:\n  dir: ${state}\n`);
    mkdirSync(state, { recursive: true });
    writeFileSync(
      join(state, "config-overrides.json"),
      JSON.stringify({ format: 2, values: { telemetry: { interval: "3s" } } }),
    );
    const env = { OUTPOST_LOG__LEVEL: "debug" };
    const printed = await run(["config", "print", path], env);
    assert.equal(printed.code, 0, printed.err);
    assert.match(printed.out, /interval: 3s/);
    assert.match(printed.out, /level: debug/);
    const sourced = await run(["config", "print", path, "--sources"], env);
    assert.equal(sourced.code, 0, sourced.err);
    const lines = sourced.out.split("\n");
    const line = (key: string) => lines.find((l) => l.startsWith(`${key} = `));
    assert.equal(line("telemetry.interval"), `telemetry.interval = "3s"  # in ${join(state, "config-overrides.json")}`);
    assert.equal(line("log.level"), 'log.level = "debug"  # from OUTPOST_LOG__LEVEL');
    assert.equal(line("state.dir"), `state.dir = ${JSON.stringify(state)}  # in ${path}`);
    assert.equal(line("outbox.window"), "outbox.window = 64  # default");
  });

  // Issue 10 item 8: on bbb3be8 `outpost run` as a normal user failed on /var/lib/outpost with a stack trace.
  it("run refuses an unusable state.dir in one line saying what to do; validate only warns", async () => {
    const path = join(dir, "bad-state.yaml");
    writeFileSync(path, "state:\n  dir: /dev/null/state\nmqtt:\n  url: mqtt://127.0.0.1:1\n");
    const ran = await run(["run", "--config", path]);
    assert.equal(ran.code, 78);
    const lines = ran.err.trim().split("\n");
    assert.equal(lines.length, 1, ran.err);
    assert.match(lines[0] ?? "", /state\.dir \/dev\/null\/state .*ENOTDIR.*--config.*OUTPOST_STATE__DIR.*service user/);
    const validated = await run(["config", "validate", path]);
    assert.equal(validated.code, 0);
    assert.match(validated.err, /warning: state\.dir \/dev\/null\/state/);
  });

  it("keygen writes a key pair once and refuses to overwrite it without --force", async () => {
    const prefix = join(dir, "ops");
    const first = await run(["keygen", "--out", prefix]);
    assert.equal(first.code, 0, first.err);
    assert.match(first.out, /ops\.pub: ed25519:[A-Za-z0-9+/]{43}=/);
    const again = await run(["keygen", "--out", prefix]);
    assert.equal(again.code, 64);
    assert.match(again.err, /exist \(--force overwrites\)/);
    assert.equal((await run(["keygen", "--out", prefix, "--force"])).code, 0);
  });

  it("has help for each command", async () => {
    for (const argv of [
      ["--help"],
      ["run", "--help"],
      ["demo", "--help"],
      ["config", "--help"],
      ["ctl", "--help"],
      ["keygen", "--help"],
    ]) {
      const { code, out } = await run(argv);
      assert.equal(code, 0, argv.join(" "));
      assert.match(out, /^Usage: outpost/);
    }
  });

  it("validates a config: exit 0 when good, 78 with one line per problem when bad", async () => {
    const good = join(dir, "good.yaml");
    writeFileSync(good, "device:\n  id: pi-7\n");
    const ok = await run(["config", "validate", good]);
    assert.equal(ok.code, 0);
    assert.match(ok.out, /valid \(device pi-7/);

    const bad = join(dir, "bad.yaml");
    writeFileSync(bad, "mqtt:\n  url: ftp://x\n  keepalive: 1s\n");
    const res = await run(["config", "validate", bad]);
    assert.equal(res.code, 78);
    const lines = res.err.trim().split("\n").slice(1);
    assert.equal(lines.length, 2);
    assert.match(
      lines[0] ?? "",
      /^ {2}mqtt\.url: expected an mqtt:\/\/ or mqtts:\/\/ URL, found "ftp:\/\/x" \(in .*bad\.yaml\)$/,
    );
    assert.match(lines[1] ?? "", /^ {2}mqtt\.keepalive: expected a duration between 5s and 1h, found "1s"/);
    assert.equal((await run(["run", "--config", bad])).code, 78);
    assert.equal((await run(["config", "validate", join(dir, "missing.yaml")])).code, 78);
  });

  it("prints the JSON Schema and the effective config with secrets redacted", async () => {
    const schema = await run(["config", "schema"]);
    assert.equal(schema.code, 0);
    const parsed = JSON.parse(schema.out) as { properties: Record<string, unknown> };
    assert.deepEqual(Object.keys(parsed.properties), [
      "device",
      "mqtt",
      "telemetry",
      "resources",
      "tasks",
      "update",
      "http",
      "homeassistant",
      "service",
      "outbox",
      "state",
      "log",
      "commands",
      "shutdown",
    ]);

    const printed = await run(["config", "print", join(dir, "absent.yaml")], { OUTPOST_MQTT__PASSWORD: "hunter2" });
    assert.equal(printed.code, 78, "an explicit path must exist");
    const effective = await run(["config", "print"], { OUTPOST_MQTT__PASSWORD: "hunter2", OUTPOST_DEVICE__ID: "x1" });
    assert.equal(effective.code, 0);
    assert.match(effective.out, /password: <redacted>/);
    assert.match(effective.out, /id: x1/);
    assert.ok(!effective.out.includes("hunter2"));
  });
});
