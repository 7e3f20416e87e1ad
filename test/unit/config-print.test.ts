// Issue 23 item 2: on 8ee023c `config print --sources` labelled every key "# default" unless config.set
// overrides were stored (origins were recorded only when overrides were loaded), crashed on the README's own
// example ("Cannot read properties of undefined (reading 'rails')": the dotted deadband key
// "jetson.rails.*.watts"), and printed `passwordFile` beside `password: <redacted>`, which does not validate.
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { OVERRIDES_FILE } from "../../src/config/store.ts";
import { openConfigStore } from "../../src/schema.ts";
import { runCli as run } from "../helpers/cli.ts";
import { tempDir } from "../helpers/temp.ts";

const dir = tempDir("outpost-print-");
const lineOf = (out: string, key: string) => out.split("\n").find((l) => l.startsWith(`${key} = `));

describe("config print --sources", () => {
  it("names the file, the environment, a saved override and the default, each without the others", async () => {
    const state = join(dir, "state-a");
    const path = join(dir, "a.yaml");
    writeFileSync(path, `telemetry:\n  interval: 10s\nstate:\n  dir: ${state}\n`);
    const fileOnly = await run(["config", "print", path, "--sources"]);
    assert.equal(fileOnly.code, 0, fileOnly.err);
    assert.equal(lineOf(fileOnly.out, "telemetry.interval"), `telemetry.interval = "10s"  # in ${path}`);
    assert.equal(lineOf(fileOnly.out, "outbox.window"), "outbox.window = 64  # default");

    const envOnly = await run(["config", "print", path, "--sources"], { OUTPOST_OUTBOX__WINDOW: "32" });
    assert.equal(lineOf(envOnly.out, "outbox.window"), "outbox.window = 32  # from OUTPOST_OUTBOX__WINDOW");
    assert.equal(lineOf(envOnly.out, "telemetry.interval"), `telemetry.interval = "10s"  # in ${path}`);

    mkdirSync(state, { recursive: true });
    const overrides = join(state, "config-overrides.json");
    writeFileSync(overrides, JSON.stringify({ format: 2, values: { telemetry: { fullInterval: "1m" } } }));
    const saved = await run(["config", "print", path, "--sources"]);
    assert.equal(lineOf(saved.out, "telemetry.fullInterval"), `telemetry.fullInterval = "1m"  # in ${overrides}`);
    assert.equal(lineOf(saved.out, "telemetry.interval"), `telemetry.interval = "10s"  # in ${path}`);
  });

  it("prints a dotted key as one quoted segment, with its origin, also when the environment sets the whole record", async () => {
    const path = join(dir, "dotted.yaml");
    writeFileSync(path, `telemetry:\n  deadbands: { temperature: 0.5, "jetson.rails.*.watts": 1 }\n`);
    const fromFile = await run(["config", "print", path, "--sources"]);
    assert.equal(fromFile.code, 0, fromFile.err);
    assert.equal(
      lineOf(fromFile.out, 'telemetry.deadbands."jetson.rails.*.watts"'),
      `telemetry.deadbands."jetson.rails.*.watts" = 1  # in ${path}`,
    );
    const fromEnv = await run(["config", "print", path, "--sources"], {
      OUTPOST_TELEMETRY__DEADBANDS: '{"gpu.load": 2}',
    });
    assert.equal(fromEnv.code, 0, fromEnv.err);
    assert.equal(
      lineOf(fromEnv.out, 'telemetry.deadbands."gpu.load"'),
      `telemetry.deadbands."gpu.load" = 2  # from OUTPOST_TELEMETRY__DEADBANDS`,
    );
  });
});

describe("config print", () => {
  it("prints a configuration that itself validates, to the same hash (a password file is not printed as a password too)", async () => {
    const pw = join(dir, "mqtt.password");
    writeFileSync(pw, "hunter2\n");
    const path = join(dir, "pwfile.yaml");
    writeFileSync(path, `mqtt:\n  username: pi\n  passwordFile: ${pw}\nstate:\n  dir: ${join(dir, "s")}\n`);
    const printed = await run(["config", "print", path]);
    assert.equal(printed.code, 0, printed.err);
    assert.ok(!printed.out.includes("hunter2"));
    assert.ok(!/^\s+password:/m.test(printed.out), printed.out);
    const again = join(dir, "printed.yaml");
    writeFileSync(again, printed.out);
    const original = await run(["config", "validate", path]);
    const validated = await run(["config", "validate", again]);
    assert.equal(validated.code, 0, validated.err);
    const hash = (out: string) => /hash ([0-9a-f]+)/.exec(out)?.[1];
    assert.equal(hash(validated.out), hash(original.out));
  });
});

describe("where a value came from, as the agent holds it", () => {
  // Issue 24, item 7: origins were recorded on one load path only, so a value config.set had just changed was
  // said to be the default until the next reload. They are now part of the snapshot they describe.
  it("a key config.set changed comes from the overrides file at once, and after a reload", () => {
    const state = join(dir, "origins-state");
    mkdirSync(state, { recursive: true });
    const file = join(dir, "origins.yaml");
    writeFileSync(file, `device: { id: o-1 }\nstate: { dir: ${state} }\ntelemetry: { fullInterval: 2m }\n`);
    const store = openConfigStore({ path: file, env: {}, hostname: "h" });
    assert.equal(store.origins().get("telemetry.fullInterval"), `in ${file}`);
    assert.equal(store.origins().get("telemetry.interval"), undefined, "the default");
    const result = store.patch({ telemetry: { interval: "5s" } }, { reason: "config.set request r-1" });
    assert.equal(result.ok, true);
    const overrides = `in ${join(state, OVERRIDES_FILE)}`;
    assert.equal(store.origins().get("telemetry.interval"), overrides);
    assert.equal(store.origins().get("telemetry.fullInterval"), `in ${file}`);
    store.reload("SIGHUP");
    assert.equal(store.origins().get("telemetry.interval"), overrides);
  });
});

describe("found by review of the typed view and the snapshot's origins", () => {
  it("a config.set removal gives the key back to the file, in origins too", () => {
    const state = join(dir, "removal-state");
    mkdirSync(state, { recursive: true });
    const file = join(dir, "removal.yaml");
    writeFileSync(
      file,
      `device: { id: o-2 }\nstate: { dir: ${state} }\ntelemetry: { interval: 20s, fullInterval: 10m }\n`,
    );
    const store = openConfigStore({ path: file, env: {}, hostname: "h" });
    assert.equal(store.patch({ telemetry: { interval: "30s" } }).ok, true);
    assert.equal(store.patch({ telemetry: { interval: null } }).ok, true);
    assert.equal(store.current().config.telemetry.interval, "20s");
    assert.equal(store.origins().get("telemetry.interval"), `in ${file}`);
    assert.equal(store.patch({ telemetry: { interval: "40s" } }).ok, true);
    assert.equal(store.patch({ telemetry: null }).ok, true);
    assert.equal(store.origins().get("telemetry.interval"), `in ${file}`);
    assert.equal(store.origins().get("telemetry.fullInterval"), `in ${file}`);
    assert.equal(store.origins().get("telemetry"), undefined);
  });

  it("a duration too large for a number is refused as invalid, never stored, never a crash at the next start", () => {
    const state = join(dir, "huge-state");
    mkdirSync(state, { recursive: true });
    const file = join(dir, "huge.yaml");
    writeFileSync(file, `device: { id: o-3 }\nstate: { dir: ${state} }\n`);
    const huge = `${"9".repeat(400)}s`;
    const store = openConfigStore({ path: file, env: {}, hostname: "h" });
    const result = store.patch({ telemetry: { interval: huge } });
    assert.equal(result.ok, false);
    assert.equal(result.ok === false && result.code, "CONFIG_INVALID");
    assert.equal(openConfigStore({ path: file, env: {}, hostname: "h" }).current().typed.telemetry.interval, 10_000);
    writeFileSync(file, `device: { id: o-3 }\nstate: { dir: ${state} }\ntelemetry: { interval: ${huge} }\n`);
    assert.throws(() => openConfigStore({ path: file, env: {}, hostname: "h" }), /CONFIG_INVALID|expected a duration/);
    assert.equal(store.reload("SIGHUP").ok, false);
  });
});
