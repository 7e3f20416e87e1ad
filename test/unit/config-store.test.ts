import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { pino } from "pino";
import { stringify } from "yaml";
import type { Snapshot } from "../../src/config/store.ts";
import { openConfigStore } from "../../src/schema.ts";
import { tempDir } from "../helpers/temp.ts";

function setup(config: Record<string, unknown> = {}) {
  const dir = tempDir("outpost-store-");
  const path = join(dir, "config.yaml");
  const write = (c: Record<string, unknown>) =>
    writeFileSync(path, stringify({ device: { id: "d1" }, state: { dir: join(dir, "state") }, ...c }));
  write(config);
  const open = (env: Record<string, string> = {}) => openConfigStore({ path, env, hostname: "h" });
  return { dir, path, write, open };
}

test("a valid file change becomes the next immutable snapshot; listeners see old and new", () => {
  const s = setup({ telemetry: { interval: "10s" } });
  const store = s.open();
  const seen: [Snapshot, Snapshot][] = [];
  store.on("change", (next, previous) => seen.push([next, previous]));
  const first = store.current();
  s.write({ telemetry: { interval: "2s" }, log: { level: "debug" } });
  const result = store.reload("test");
  assert.equal(result.ok, true);
  assert.deepEqual(result.ok && result.changed, ["log.level", "telemetry.interval"]);
  assert.equal(store.current().version, 2);
  assert.equal(store.current().config.telemetry.interval, "2s");
  assert.equal(first.config.telemetry.interval, "10s", "the old snapshot is unchanged");
  assert.ok(Object.isFrozen(store.current().config.telemetry));
  assert.equal(seen.length, 1);
  assert.equal(seen[0]?.[1], first);
});

test("an invalid change keeps the current snapshot and reports every problem with its source", () => {
  const s = setup();
  const store = s.open();
  const before = store.current();
  s.write({ telemetry: { interval: "soon" }, bogus: 1 });
  const result = store.reload("test");
  assert.equal(result.ok, false);
  assert.deepEqual(!result.ok && result.problems.map((p) => p.path).sort(), ["bogus", "telemetry.interval"]);
  assert.ok(!result.ok && result.problems.every((p) => p.source === `in ${s.path}`));
  assert.equal(store.current(), before);
});

test("an unchanged reload is not a new version", () => {
  const s = setup();
  const store = s.open();
  assert.equal(store.reload("test").ok, true);
  assert.equal(store.current().version, 1);
});

test("config.set merges a patch, stores it, and survives a restart; null removes a key", () => {
  const s = setup({ telemetry: { interval: "10s" } });
  const store = s.open();
  const result = store.patch({ telemetry: { interval: "3s" }, outbox: { window: 8 } });
  assert.equal(result.ok, true);
  assert.deepEqual(result.ok && result.restartRequired, ["outbox.window"]);
  const stored = JSON.parse(readFileSync(join(s.dir, "state", "config-overrides.json"), "utf8"));
  assert.deepEqual(stored, { format: 2, values: { telemetry: { interval: "3s" }, outbox: { window: 8 } } });

  const restarted = s.open();
  assert.equal(restarted.current().config.telemetry.interval, "3s");
  assert.deepEqual(restarted.restartRequired(), []);
  restarted.patch({ telemetry: { interval: null } });
  assert.equal(restarted.current().config.telemetry.interval, "10s", "back to the file's value");
});

test("the environment wins over config.set, which wins over the file", () => {
  const s = setup({ telemetry: { interval: "10s", collectorTimeout: "1s" } });
  const store = s.open({ OUTPOST_TELEMETRY__INTERVAL: "7s" });
  store.patch({ telemetry: { interval: "3s", collectorTimeout: "3s" } });
  assert.equal(store.current().config.telemetry.interval, "7s");
  assert.equal(store.current().config.telemetry.collectorTimeout, "3s");
});

test("config.set refuses local-only keys and invalid values, naming the path and storing nothing", () => {
  const s = setup();
  const store = s.open();
  for (const patch of [
    { mqtt: { url: "mqtt://elsewhere:1883" } },
    { state: { dir: "/tmp" } },
    { telemetry: { interval: 5 } },
  ]) {
    const result = store.patch(patch as Record<string, unknown>);
    assert.equal(result.ok, false);
    assert.match(result.ok ? "" : (result.problems[0]?.path ?? ""), /^(mqtt\.url|state\.dir|telemetry\.interval)$/);
  }
  assert.equal(store.current().version, 1);
  assert.throws(() => readFileSync(join(s.dir, "state", "config-overrides.json")));
});

test("a SIGHUP reload and a config.set in the same turn both land, one version each, none half-applied", async () => {
  const s = setup({ log: { level: "info" } });
  const store = s.open();
  const versions: number[] = [];
  store.on("change", (next) => versions.push(next.version));
  s.write({ log: { level: "debug" } });
  // Both started together, as a signal handler and a message handler would be.
  await Promise.all([
    Promise.resolve().then(() => store.reload("SIGHUP")),
    Promise.resolve().then(() => store.patch({ telemetry: { interval: "4s" } })),
  ]);
  const { config, version } = store.current();
  assert.equal(config.log.level, "debug");
  assert.equal(config.telemetry.interval, "4s");
  assert.equal(version, 3);
  assert.deepEqual(versions, [2, 3]);
});

test("stored overrides that no longer validate are ignored at start, and reported", () => {
  const s = setup();
  s.open().patch({ telemetry: { interval: "3s" } });
  writeFileSync(join(s.dir, "state", "config-overrides.json"), JSON.stringify({ telemetry: { interval: "never" } }));
  const store = s.open();
  assert.equal(store.current().config.telemetry.interval, "10s");
  assert.equal(store.overrideProblems[0]?.path, "telemetry.interval");
});

// Issue 8, item 3: on bbb3be8 a key allowed only config.* could set allowUnsigned or rewrite the trusted keys,
// and both were stored for good.
const KEY_A = `ed25519:${Buffer.alloc(32, 1).toString("base64")}`;
const KEY_B = `ed25519:${Buffer.alloc(32, 2).toString("base64")}`;
const keys = { commands: { trustedKeys: [{ name: "ops", key: KEY_A, allow: ["ping", "config.*"] }] } };

test("the command policy cannot be changed remotely: allowUnsigned, clockSkew, maxValidity", () => {
  const s = setup(keys);
  const store = s.open();
  for (const patch of [
    { commands: { allowUnsigned: true } },
    { commands: { clockSkew: "1h" } },
    { commands: { maxValidity: "1d" } },
  ]) {
    const result = store.patch(patch);
    assert.equal(result.ok, false, JSON.stringify(patch));
    assert.equal(store.current().version, 1);
  }
  assert.equal(store.current().config.commands.allowUnsigned, false);
});

test("trusted keys change remotely only with trust, and never down to no key that can run config.set", () => {
  const s = setup(keys);
  const store = s.open();
  const widened = { commands: { trustedKeys: [{ name: "ops", key: KEY_A, allow: ["*"] }] } };
  const refused = store.patch(widened);
  assert.deepEqual(!refused.ok && [refused.code, refused.problems.map((p) => p.path)], [
    "KEY_NOT_ALLOWED",
    ["commands.trustedKeys"],
  ]);
  assert.deepEqual(store.patch(widened, { trust: false }).ok, false);

  const lockout = { code: "CONFIG_LOCKOUT" as const, problems: [] };
  const guard = (next: { commands: { trustedKeys: { allow: string[] }[] } }) =>
    next.commands.trustedKeys.some((k) => k.allow.includes("*") || k.allow.includes("config.*")) ? undefined : lockout;
  const empty = store.patch({ commands: { trustedKeys: [] } }, { trust: true, guard });
  assert.equal(!empty.ok && empty.code, "CONFIG_LOCKOUT");
  assert.equal(store.current().version, 1);

  const added = {
    commands: { trustedKeys: [...keys.commands.trustedKeys, { name: "b", key: KEY_B, allow: ["ping"] }] },
  };
  assert.equal(store.patch(added, { trust: true, guard }).ok, true);
  assert.equal(store.current().config.commands.trustedKeys.length, 2);
  // Removing the override again (a null) is a change of trust too.
  assert.equal(store.patch({ commands: null }).ok, false);
  assert.equal(store.patch({ commands: null }, { trust: true, guard }).ok, true);
  assert.equal(store.current().config.commands.trustedKeys.length, 1);
});

test("stored overrides of the command policy or trust from before the fix are dropped at start", () => {
  const s = setup(keys);
  const overrides = join(s.dir, "state", "config-overrides.json");
  mkdirSync(join(s.dir, "state"), { recursive: true });
  const tampered = {
    telemetry: { interval: "3s" },
    commands: { allowUnsigned: true, trustedKeys: [{ name: "x", key: KEY_B, allow: ["*"] }] },
  };
  writeFileSync(overrides, JSON.stringify(tampered));
  const store = s.open();
  assert.deepEqual(store.droppedOverrides, ["commands.allowUnsigned", "commands.trustedKeys"]);
  assert.equal(store.current().config.commands.allowUnsigned, false);
  assert.deepEqual(
    store.current().config.commands.trustedKeys.map((k) => k.name),
    ["ops"],
  );
  assert.equal(store.current().config.telemetry.interval, "3s", "the harmless override stays");
  // Rewritten without them: the next start finds nothing to drop.
  assert.deepEqual(JSON.parse(readFileSync(overrides, "utf8")), {
    format: 2,
    values: { telemetry: { interval: "3s" } },
  });
  assert.deepEqual(s.open().droppedOverrides, []);
});

// Issue 10 item 4: on bbb3be8 a bad config.set value was blamed on config-overrides.json and a typo'd section on
// the config file, and both were logged at error level.
test("a refused config.set names the request as the source, and is a warning", () => {
  const s = setup();
  const lines: Record<string, unknown>[] = [];
  const store = openConfigStore({
    path: s.path,
    env: {},
    hostname: "h",
    logger: pino({ level: "info" }, { write: (l: string) => lines.push(JSON.parse(l)) }),
  });
  const reason = "config.set request r-1 (key ops)";
  const bad = store.patch({ telemetry: { interval: "fast" } }, { reason });
  assert.deepEqual(!bad.ok && bad.problems.map((p) => [p.path, p.source]), [["telemetry.interval", `in ${reason}`]]);
  const typo = store.patch({ telemetryy: { interval: "5s" } }, { reason });
  assert.deepEqual(!typo.ok && typo.problems.map((p) => [p.path, p.source]), [["telemetryy", `in ${reason}`]]);
  assert.deepEqual(
    lines.filter((l) => l.msg === "configuration change refused; keeping the current one").map((l) => l.level),
    [40, 40],
  );
});
