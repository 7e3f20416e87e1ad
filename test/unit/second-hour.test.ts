// Issue 23: what a new operator trips over once the demo runs. Each test failed on 8ee023c as its comment says.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { parse } from "yaml";
import { EXAMPLE_CONFIG } from "../../src/cli/install-command.ts";
import { configSchema, openConfigStore } from "../../src/schema.ts";
import { runCli as run } from "../helpers/cli.ts";
import { tempDir } from "../helpers/temp.ts";

const dir = tempDir("outpost-second-hour-");
const A_KEY = `ed25519:${"A".repeat(43)}=`;

describe("keygen (item 4)", () => {
  // On 8ee023c every key got the commands.trustedKeys snippet with allow: ["*"], a release key too.
  it("--release prints the update.trustedKeys snippet, which validates and grants no command", async () => {
    const res = await run(["keygen", "--out", join(dir, "release"), "--release"]);
    assert.equal(res.code, 0, res.err);
    const snippet = res.out.slice(res.out.indexOf("\n  update:") + 1);
    const config = parse(snippet.replace(/^ {2}/gm, "")) as Record<string, unknown>;
    const parsed = configSchema.safeParse(config);
    assert.ok(parsed.success, JSON.stringify(parsed.error?.issues));
    assert.deepEqual(Object.keys(config), ["update"]);
    assert.equal(parsed.data.update.trustedKeys.length, 1);
    assert.ok(!res.out.includes("allow"), res.out);
  });

  it("plain keygen prints the command-key snippet and one line on where a release key goes", async () => {
    const res = await run(["keygen", "--out", join(dir, "ops")]);
    assert.equal(res.code, 0, res.err);
    assert.match(res.out, /commands:\n {4}trustedKeys:\n {6}- \{ name: ops, key: "ed25519:/);
    assert.match(res.out, /release key .*keygen --release.*update\.trustedKeys/);
  });
});

describe("the example config install writes (item 6)", () => {
  // On 8ee023c it ended with a bare `{}`: uncommenting any section made the file invalid YAML.
  it("stays valid with each section uncommented, and with all of them", () => {
    const lines = EXAMPLE_CONFIG.split("\n");
    const sections = lines.flatMap((l, i) => (/^# [a-z]+:\s*(#.*)?$/.test(l) ? [i] : []));
    assert.ok(sections.length >= 4, "the example shows sections");
    const uncomment = (chosen: number[]) =>
      lines
        .map((l, i) => {
          const section = [...sections].reverse().find((s) => s <= i);
          const inside = section !== undefined && chosen.includes(section) && (i === section || /^# {2,}/.test(l));
          return inside ? l.slice(2) : l;
        })
        .join("\n")
        .replaceAll("<contents of ops.pub>", A_KEY)
        .replaceAll("<contents of release.pub>", A_KEY);
    for (const chosen of [[], ...sections.map((s) => [s]), sections]) {
      const config = parse(uncomment(chosen)) ?? {};
      const result = configSchema.safeParse(config);
      assert.ok(result.success, `${chosen.map((s) => lines[s]).join(", ")}: ${JSON.stringify(result.error?.issues)}`);
      assert.equal(Object.keys(config).length, chosen.length);
    }
  });
});

describe("config validate (item 7)", () => {
  // On 8ee023c the schema's problems came first and the unreadable files only after those were fixed.
  it("prints the schema's problems and the unreadable files in one pass", async () => {
    const path = join(dir, "rounds.yaml");
    writeFileSync(
      path,
      `mqtt:\n  url: http://x\n  passwordFile: ${join(dir, "no-password")}\n  ca: ${join(dir, "no-ca.pem")}\n`,
    );
    const res = await run(["config", "validate", path]);
    assert.equal(res.code, 78);
    assert.match(res.err, /mqtt\.url: expected an mqtt/);
    assert.match(res.err, /mqtt\.passwordFile: expected a readable file .*ENOENT/);
    assert.match(res.err, /mqtt\.ca: expected a readable PEM file.*ENOENT/);
  });

  it("warns about a task's model or golden image that cannot be read", async () => {
    const path = join(dir, "task.yaml");
    const model = join(dir, "missing.onnx");
    const golden = join(dir, "missing.png");
    writeFileSync(
      path,
      [
        `state: { dir: ${join(dir, "state")} }`,
        "tasks:",
        "  define:",
        "    inspect:",
        "      type: classify-image",
        `      model: ${model}`,
        "      labels: [good, bad]",
        "      input: { width: 8, height: 8, channels: 1 }",
        "      pass: { labels: [good] }",
        `      golden: { image: ${golden}, label: good }`,
        "",
      ].join("\n"),
    );
    const res = await run(["config", "validate", path]);
    assert.equal(res.code, 0, res.err);
    assert.match(res.err, new RegExp(`warning: tasks\\.define\\.inspect\\.model: cannot read ${model} \\(ENOENT\\)`));
    assert.match(
      res.err,
      new RegExp(`warning: tasks\\.define\\.inspect\\.golden\\.image: cannot read ${golden} \\(ENOENT\\)`),
    );
  });
});

describe("messages (item 11)", () => {
  // On 8ee023c `{"input":{}}` said "expected either feeds or image, not both" (neither was given) and a
  // request without input got zod's raw "Invalid input: expected object, received undefined".
  it("task.run says which of feeds and image is missing, in words", async () => {
    const { runParams } = await import("../../src/tasks/module.ts");
    const { checkParams } = await import("../../src/commands/rules.ts");
    const message = (params: unknown) => {
      const r = checkParams(runParams, params);
      assert.ok(!r.ok);
      return r.message;
    };
    assert.match(message({ task: "inspect", input: {} }), /^params\.input: .*found neither/);
    assert.match(message({ task: "inspect", input: { feeds: {}, image: "" } }), /^params\.input: .*found both/);
    const missing = message({ task: "inspect" });
    assert.doesNotMatch(missing, /Invalid input|received undefined/);
    assert.match(missing, /^params\.input: expected .*image.*feeds.*, found nothing$/);
  });

  it("a missing parameter is named in words, not with zod's raw text", async () => {
    const { z } = await import("zod");
    const { checkParams } = await import("../../src/commands/rules.ts");
    const r = checkParams(z.strictObject({ ms: z.number() }), {});
    assert.ok(!r.ok);
    assert.equal(r.message, "params.ms: expected a number, found nothing");
  });
});

describe("ctl flags before the subcommand (item 11)", () => {
  // On 8ee023c `ctl --key FILE call DEVICE ping` failed with "ctl: unknown subcommand FILE".
  it("--key FILE, --timeout and --group NAME may come before the subcommand", async () => {
    const missing = join(dir, "no-such.key");
    const keyFirst = await run(["ctl", "--key", missing, "call", "dev-1", "ping"]);
    assert.equal(keyFirst.code, 64);
    assert.doesNotMatch(keyFirst.err, /unknown subcommand/);
    assert.match(keyFirst.err, /--key .*no-such\.key: .*ENOENT/);
    const timeoutFirst = await run(["ctl", "--timeout", "soon", "call", "dev-1", "ping", "--unsigned"]);
    assert.match(timeoutFirst.err, /--timeout must be a duration/);
    const groupFirst = await run(["ctl", "--group", "line-3", "update", join(dir, "no-release")]);
    assert.doesNotMatch(groupFirst.err, /unknown subcommand/);
  });
});

describe("the unit's documentation (item 11)", () => {
  // On 8ee023c the unit's Documentation= named systemd's manual, not Outpost's.
  it("names a page install writes beside the releases, which says where the log and the docs are", async () => {
    const { LAYOUT, unitText, deviceReadme } = await import("../../src/service/unit.ts");
    assert.match(unitText(), new RegExp(`^Documentation=file:${LAYOUT.readme}$`, "m"));
    assert.doesNotMatch(unitText(), /man:systemd/);
    assert.match(deviceReadme(), /journalctl -u outpost/);
    assert.match(deviceReadme(), /outpost config validate/);
  });
});

describe("hints print what works where they run (item 1)", () => {
  // On 8ee023c a usage error said "Run 'outpost --help'", which is not on PATH in a checkout.
  it("a usage error and keygen's hint name the way this program was started", async () => {
    const fromCheckout = { invocation: "npm run -s outpost --" };
    const usage = await run(["frobnicate"], {}, undefined, fromCheckout);
    assert.equal(usage.code, 64);
    assert.match(usage.err, /Run 'npm run -s outpost -- --help' for usage/);
    const keygen = await run(["keygen", "--out", join(dir, "hint")], {}, undefined, fromCheckout);
    assert.match(keygen.out, /'npm run -s outpost -- keygen --release'/);
    const installed = await run(["frobnicate"], {}, undefined, { invocation: "outpost" });
    assert.match(installed.err, /Run 'outpost --help' for usage/);
  });
});

describe("ctl's settings (items 8 and 13)", () => {
  // On 8ee023c ctl read its broker and key only from flags and the environment, and a refused connection said
  // only "connect ECONNREFUSED 127.0.0.1:1883".
  it("reads ~/.outpost/ctl.yaml under the environment and the flags; ctl config says where each value comes from", async () => {
    const home = join(dir, "home");
    const { mkdirSync } = await import("node:fs");
    mkdirSync(join(home, ".outpost"), { recursive: true });
    writeFileSync(join(home, ".outpost", "ctl.yaml"), "broker: mqtt://127.0.0.1:1\nkey: ops.key\nprefix: plant/v1\n");
    const file = join(home, ".outpost", "ctl.yaml");
    const shown = await run(["ctl", "config"], { HOME: home, OUTPOST_CTL_PREFIX: "line/v1" });
    assert.equal(shown.code, 0, shown.err);
    const line = (name: string) => shown.out.split("\n").find((l) => l.startsWith(`${name} `)) ?? "";
    assert.match(line("broker"), new RegExp(`^broker +mqtt://127\\.0\\.0\\.1:1  # in ${file}$`));
    assert.match(line("key"), new RegExp(`^key +${join(home, ".outpost", "ops.key")}  # in ${file}$`));
    assert.match(line("prefix"), /^prefix +line\/v1 {2}# OUTPOST_CTL_PREFIX$/);
    assert.match(line("protocol"), /^protocol +auto {2}# default$/);
    const flagged = await run(["ctl", "config", "--broker", "mqtt://127.0.0.1:2"], { HOME: home });
    assert.match(flagged.out, /^broker +mqtt:\/\/127\.0\.0\.1:2 {2}# --broker$/m);
    // A refused connection names where the address came from.
    const refused = await run(["ctl", "devices"], { HOME: home });
    assert.equal(refused.code, 69);
    assert.match(refused.err, new RegExp(`no connection to the broker at mqtt://127\\.0\\.0\\.1:1 \\(in ${file}\\)`));
    const bad = join(dir, "bad-ctl.yaml");
    writeFileSync(bad, "brokr: mqtt://x\n");
    const invalid = await run(["ctl", "devices"], { OUTPOST_CTL_CONFIG: bad });
    assert.equal(invalid.code, 64);
    assert.match(invalid.err, /bad-ctl\.yaml: unknown key brokr \(known: broker,/);
  });

  it("the default broker's refusal names --broker, OUTPOST_CTL_BROKER and the file", async () => {
    const { brokerOptions, ctlSettings } = await import("../../src/cli/ctl-settings.ts");
    const host = { env: { HOME: "/home/op" } } as unknown as Parameters<typeof ctlSettings>[0];
    assert.equal(
      brokerOptions(ctlSettings(host, {})).origin,
      "the default: give --broker, OUTPOST_CTL_BROKER or broker: in /home/op/.outpost/ctl.yaml",
    );
  });
});

describe("config.set under the environment (item 9)", () => {
  // On 8ee023c config.set answered ok with changed: [] when the environment set the key (the demo sets
  // OUTPOST_TELEMETRY__INTERVAL, so the README's own example changed nothing), and said nothing about why.
  it("says which keys of the patch the environment shadows, and by which variable", async () => {
    const store = openConfigStore({
      hostname: "h",
      env: { OUTPOST_TELEMETRY__INTERVAL: "1s", OUTPOST_STATE__DIR: join(dir, "shadow-state") },
    });
    const result = store.patch({ telemetry: { interval: "5s", fullInterval: "1m" } });
    assert.ok(result.ok);
    assert.deepEqual(result.changed, ["telemetry.fullInterval"]);
    assert.deepEqual(result.shadowed, [{ path: "telemetry.interval", by: "OUTPOST_TELEMETRY__INTERVAL" }]);
  });
});

// A fresh-context review of the fixes above found these; each test failed before its fix.
describe("found by the review of this issue's fixes", () => {
  it("an empty mqtt.ca or passwordFile is reported, not taken as none (a blank variable must not drop the pinned CA)", async () => {
    const path = join(dir, "empty-files.yaml");
    writeFileSync(path, 'mqtt:\n  url: mqtts://b:8883\n  ca: ""\n  passwordFile: ""\n');
    const res = await run(["config", "validate", path], { OUTPOST_MQTT__CERT: "", OUTPOST_MQTT__KEY: "" });
    assert.equal(res.code, 78, res.out);
    for (const key of ["ca", "passwordFile", "cert", "key"])
      assert.match(res.err, new RegExp(`mqtt\\.${key}: expected a readable`));
  });

  it("an unknown parameter is named as unknown, also inside task.run's input", async () => {
    const { z } = await import("zod");
    const { checkParams } = await import("../../src/commands/rules.ts");
    const { runParams } = await import("../../src/tasks/module.ts");
    const unknown = checkParams(z.strictObject({}).nullish(), { x: 1 });
    assert.ok(!unknown.ok);
    assert.equal(unknown.message, 'params: unknown key "x"');
    const inInput = checkParams(runParams, { task: "x", input: { image: "aGk=", imgae: "aGk=" } });
    assert.ok(!inInput.ok);
    assert.equal(inInput.message, 'params.input: unknown key "imgae"');
    const pattern = checkParams(z.strictObject({ t: z.string().regex(/^a$/) }), { t: "b" });
    assert.ok(!pattern.ok);
    assert.doesNotMatch(pattern.message, /expected invalid/i);
  });

  it("ctl: a --group or --wait before the subcommand never takes the next flag as its value", async () => {
    const r = await run(["ctl", "--group", "--broker", "mqtt://127.0.0.1:1", "call", "lab", "ping", "--unsigned"]);
    assert.doesNotMatch(r.err, /unknown subcommand/);
    assert.equal(r.code, 69, r.err);
    const w = await run(["ctl", "--wait", "--key", join(dir, "none.key"), "call", "dev", "ping"]);
    assert.doesNotMatch(w.err, /unknown subcommand/);
    assert.match(w.err, /--key .*none\.key/);
  });

  it("ctl.yaml: a FIFO is refused at once, an empty OUTPOST_CTL_CONFIG is unset, URL passwords are not shown", async () => {
    const fifo = join(dir, "ctl.fifo");
    execFileSync("mkfifo", [fifo]);
    const r = await run(["ctl", "config"], { OUTPOST_CTL_CONFIG: fifo });
    assert.equal(r.code, 64);
    assert.match(r.err, /ctl\.fifo: not a regular file/);
    const unset = await run(["ctl", "config"], { OUTPOST_CTL_CONFIG: "", HOME: join(dir, "no-home") });
    assert.equal(unset.code, 0, unset.err);
    const shown = await run(["ctl", "config"], { OUTPOST_CTL_BROKER: "mqtt://ops:s3cret@127.0.0.1:1" });
    assert.ok(!shown.out.includes("s3cret"), shown.out);
    const refused = await run(["ctl", "devices"], { OUTPOST_CTL_BROKER: "mqtt://ops:s3cret@127.0.0.1:1" });
    assert.equal(refused.code, 69);
    assert.ok(!refused.err.includes("s3cret"), refused.err);
  });

  it("ctl: OUTPOST_CTL_PASSWORD wins over ctl.yaml's passwordFile, and ctl config says which is used", async () => {
    const home = join(dir, "pw-home");
    const { mkdirSync } = await import("node:fs");
    mkdirSync(join(home, ".outpost"), { recursive: true });
    writeFileSync(join(home, ".outpost", "ctl.yaml"), "passwordFile: missing.pw\n");
    const shown = await run(["ctl", "config"], { HOME: home, OUTPOST_CTL_PASSWORD: "staging" });
    assert.equal(shown.code, 0, shown.err);
    assert.match(shown.out, /^password +<redacted> {2}# OUTPOST_CTL_PASSWORD$/m);
    assert.match(shown.out, /^passwordFile +- {2}# in .*ctl\.yaml, unused: OUTPOST_CTL_PASSWORD wins$/m);
    // The unused file is not read: its absence is no error.
    const refused = await run(["ctl", "devices", "--broker", "mqtt://127.0.0.1:1"], {
      HOME: home,
      OUTPOST_CTL_PASSWORD: "x",
    });
    assert.equal(refused.code, 69, refused.err);
  });

  it("a deadband or a task called password is configuration: printed, hashed and changed like any other", async () => {
    const path = join(dir, "password-deadband.yaml");
    writeFileSync(path, "telemetry:\n  deadbands: { password: 2 }\n");
    const printed = await run(["config", "print", path]);
    assert.match(printed.out, /password: 2/);
    const other = join(dir, "password-deadband-9.yaml");
    writeFileSync(other, "telemetry:\n  deadbands: { password: 9 }\n");
    const hash = async (p: string) => /hash ([0-9a-f]+)/.exec((await run(["config", "validate", p])).out)?.[1];
    assert.notEqual(await hash(path), await hash(other));
  });

  it("config validate names an unreadable task model also while the schema has problems", async () => {
    const path = join(dir, "rounds-task.yaml");
    const model = join(dir, "nope.onnx");
    writeFileSync(path, `telemetry: { interval: 5 }\ntasks:\n  define:\n    x: { type: onnx, model: ${model} }\n`);
    const res = await run(["config", "validate", path]);
    assert.equal(res.code, 78);
    assert.match(res.err, /telemetry\.interval: /);
    assert.match(res.err, /warning: tasks\.define\.x\.model: cannot read .*nope\.onnx \(ENOENT\)/);
  });

  it("--sources: a default beside the keys one variable sets is a default; a removal is no origin", async () => {
    const path = join(dir, "breaker.yaml");
    const state = join(dir, "breaker-state");
    writeFileSync(path, `state: { dir: ${state} }\n`);
    const res = await run(["config", "print", path, "--sources"], { OUTPOST_TASKS__BREAKER: '{"failures":3}' });
    assert.equal(res.code, 0, res.err);
    assert.match(res.out, /^tasks\.breaker\.failures = 3 {2}# from OUTPOST_TASKS__BREAKER$/m);
    assert.match(res.out, /^tasks\.breaker\.open = "30s" {2}# default$/m);
    const { mkdirSync } = await import("node:fs");
    mkdirSync(state, { recursive: true });
    writeFileSync(join(state, "config-overrides.json"), JSON.stringify({ format: 2, values: { telemetry: null } }));
    const removed = await run(["config", "print", path, "--sources"]);
    assert.match(removed.out, /^telemetry\.interval = "10s" {2}# default$/m);
  });

  it("config.set removing a section names the keys under it the environment still sets", async () => {
    const store = openConfigStore({
      hostname: "h",
      env: { OUTPOST_TELEMETRY__INTERVAL: "1s", OUTPOST_STATE__DIR: join(dir, "shadow-null") },
    });
    const result = store.patch({ telemetry: null });
    assert.ok(result.ok);
    assert.deepEqual(result.shadowed, [{ path: "telemetry.interval", by: "OUTPOST_TELEMETRY__INTERVAL" }]);
  });

  it("the view never lays an older partial over a newer retained full sample", async () => {
    const { applyMessage, telemetryLine } = await import("../../src/cli/view.ts");
    const devices = new Map();
    const send = (topic: string, body: unknown) =>
      applyMessage(devices, "P", `P/${topic}`, Buffer.from(JSON.stringify(body)));
    send("d/telemetry", { ts: 100, full: true, metrics: { cpu: { load: 10 } } });
    send("d/telemetry", { ts: 110, full: false, metrics: { cpu: { load: 50 } } });
    send("d/telemetry/full", { ts: 400, full: true, metrics: { cpu: { load: 20 } } });
    assert.match(telemetryLine(devices.get("d")), /cpu=20\.0%/);
  });
});
