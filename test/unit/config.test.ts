import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type ConfigProblem, formatProblems, redact } from "../../src/config/load.ts";
import { isOutpostError } from "../../src/core/errors.ts";
import { configJsonSchema, loadAgentConfig } from "../../src/schema.ts";

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "outpost-config-"));
});
after(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

/** Loads and returns the problems; fails the test if the config was accepted. */
function problems(options: Parameters<typeof loadAgentConfig>[0]): ConfigProblem[] {
  try {
    loadAgentConfig(options);
  } catch (err) {
    assert.ok(isOutpostError(err, "CONFIG_INVALID"), String(err));
    return err.details as ConfigProblem[];
  }
  assert.fail("configuration was accepted");
}

const find = (list: ConfigProblem[], path: string) => {
  const p = list.find((x) => x.path === path);
  assert.ok(p, `no problem reported for ${path}: ${JSON.stringify(list)}`);
  return p;
};

describe("config loading", () => {
  it("applies defaults and takes the device id from the hostname", () => {
    const { config, hash } = loadAgentConfig({ hostname: "pi-line-3" });
    assert.equal(config.device.id, "pi-line-3");
    assert.equal(config.mqtt.url, "mqtt://127.0.0.1:1883");
    assert.equal(config.mqtt.protocolVersion, 5);
    assert.equal(config.mqtt.topicPrefix, "outpost/v1");
    assert.equal(config.telemetry.interval, "10s");
    assert.equal(config.state.dir, "/var/lib/outpost");
    assert.equal(config.log.level, "info");
    assert.equal(config.commands.allowUnsigned, false);
    assert.match(hash, /^[0-9a-f]{64}$/);
  });

  it("parses an unchanged file once, and what a load merges into it never reaches the next load", () => {
    const path = file("same.yaml", "device:\n  id: pi-1\ntelemetry:\n  interval: 5s\n");
    const withEnv = loadAgentConfig({ hostname: "h", path, env: { OUTPOST_TELEMETRY__INTERVAL: "1s" } });
    assert.equal(withEnv.config.telemetry.interval, "1s");
    const overridden = loadAgentConfig({
      hostname: "h",
      path,
      overrides: { values: { device: { id: "pi-2" } }, source: "o.json" },
    });
    assert.equal(overridden.config.device.id, "pi-2");
    const plain = loadAgentConfig({ hostname: "h", path });
    assert.equal(plain.config.telemetry.interval, "5s", "the variable of an earlier load is gone");
    assert.equal(plain.config.device.id, "pi-1", "so is the override");
    writeFileSync(path, "device:\n  id: pi-3\n");
    assert.equal(loadAgentConfig({ hostname: "h", path }).config.device.id, "pi-3", "a changed file is parsed again");
  });

  it("makes an unusable hostname into a topic-safe id", () => {
    assert.equal(loadAgentConfig({ hostname: "my host/#1" }).config.device.id, "my-host--1");
  });

  it("reads YAML and JSON files", () => {
    const yaml = file(
      "a.yaml",
      "device:\n  id: pi-1\nmqtt:\n  url: mqtts://broker:8883\ntelemetry:\n  interval: 500ms\n",
    );
    const fromYaml = loadAgentConfig({ path: yaml, hostname: "h" }).config;
    assert.equal(fromYaml.device.id, "pi-1");
    assert.equal(fromYaml.mqtt.url, "mqtts://broker:8883");
    assert.equal(fromYaml.telemetry.interval, "500ms");
    const json = file(
      "a.json",
      JSON.stringify({
        device: { id: "pi-1" },
        mqtt: { url: "mqtts://broker:8883" },
        telemetry: { interval: "500ms" },
      }),
    );
    assert.deepEqual(loadAgentConfig({ path: json, hostname: "h" }).config, fromYaml);
  });

  it("lets the environment override the file, converting types from the schema", () => {
    const path = file("env.yaml", "mqtt:\n  url: mqtt://file:1883\n");
    const { config, envKeys } = loadAgentConfig({
      path,
      hostname: "h",
      env: {
        OUTPOST_MQTT__URL: "mqtt://env:1883",
        OUTPOST_MQTT__PROTOCOL_VERSION: "4",
        OUTPOST_MQTT__REJECT_UNAUTHORIZED: "false",
        OUTPOST_DEVICE__ID: "0042",
        OUTPOST_COMMANDS__TRUSTED_KEYS: '[{"name":"ops","key":"ed25519:Rl6eNbDXSwIiFJulSYcetsCof3kimBw+GEW74coW54M="}]',
        OUTPOST_NODE: "ignored: not a config key (no double underscore)",
        HOME: "/root",
      },
    });
    assert.equal(config.mqtt.url, "mqtt://env:1883");
    assert.equal(config.mqtt.protocolVersion, 4);
    assert.equal(config.mqtt.rejectUnauthorized, false);
    assert.equal(config.device.id, "0042", "a numeric-looking id stays a string");
    assert.deepEqual(config.commands.trustedKeys, [
      { name: "ops", key: "ed25519:Rl6eNbDXSwIiFJulSYcetsCof3kimBw+GEW74coW54M=", allow: ["*"] },
    ]);
    assert.equal(envKeys.length, 5);
  });

  it("takes a map from the environment as JSON or YAML (deadbands, task definitions)", () => {
    const { config } = loadAgentConfig({
      hostname: "h",
      env: {
        OUTPOST_TELEMETRY__DEADBANDS: '{"temperature": 2}',
        OUTPOST_TASKS__DEFINE: "{ hot: { type: threshold, metric: temperature.cpu, above: 80 } }",
      },
    });
    assert.equal(config.telemetry.deadbands.temperature, 2);
    assert.equal(config.tasks.define.hot?.type, "threshold");
  });

  it("names every bad key with what was expected, what was found and where", () => {
    const path = file(
      "bad.yaml",
      "mqtt:\n  url: http://broker\n  protocolVersion: 3\n  urll: x\ntelemetry:\n  interval: soon\nlog:\n  level: loud\n",
    );
    const list = problems({ path, hostname: "h", env: { OUTPOST_STATE__DIRR: "/x" } });
    assert.equal(list.length, 6);
    assert.match(find(list, "mqtt.url").expected, /mqtt:\/\/ or mqtts:\/\//);
    assert.equal(find(list, "mqtt.url").found, '"http://broker"');
    assert.equal(find(list, "mqtt.url").source, `in ${path}`);
    assert.equal(find(list, "mqtt.protocolVersion").found, "3");
    assert.match(find(list, "mqtt.urll").expected, /known keys \(url, failover, protocolVersion/);
    assert.match(find(list, "telemetry.interval").expected, /duration like/);
    assert.match(find(list, "log.level").expected, /expected one of/);
    const env = find(list, "state.dirr");
    assert.equal(env.source, "from OUTPOST_STATE__DIRR");
    const lines = formatProblems(list);
    assert.ok(
      lines.every((l) => /^[\w.()]+: expected .+, found .+/.test(l)),
      lines.join("\n"),
    );
  });

  it("reports the environment variable behind a bad value", () => {
    const list = problems({
      hostname: "h",
      env: { OUTPOST_TELEMETRY__INTERVAL: "10", OUTPOST_MQTT__KEEPALIVE: "1ms" },
    });
    assert.equal(find(list, "telemetry.interval").source, "from OUTPOST_TELEMETRY__INTERVAL");
    assert.match(find(list, "mqtt.keepalive").expected, /between 5s and 1h/);
  });

  it("rejects wrong types, bad ids and wildcard prefixes", () => {
    const list = problems({
      hostname: "h",
      env: {},
      path: file("types.yaml", "device:\n  id: 'a/b'\nmqtt:\n  topicPrefix: 'x/#'\n  rejectUnauthorized: 'yes'\n"),
    });
    assert.match(find(list, "device.id").expected, /A-Z a-z 0-9/);
    assert.match(find(list, "mqtt.topicPrefix").expected, /without wildcards/);
    assert.equal(find(list, "mqtt.rejectUnauthorized").expected, "expected true or false");
  });

  it("reports unreadable files, YAML syntax errors and a non-mapping document", () => {
    assert.match(find(problems({ path: join(dir, "missing.yaml"), hostname: "h" }), "(file)").found, /ENOENT/);
    assert.match(find(problems({ path: file("syntax.yaml", "mqtt: [\n"), hostname: "h" }), "(file)").found, /line/);
    assert.equal(find(problems({ path: file("list.yaml", "- 1\n"), hostname: "h" }), "(file)").found, "[1]");
    assert.equal(loadAgentConfig({ path: join(dir, "absent.yaml"), required: false, hostname: "h" }).file, undefined);
  });

  it("reads the password from a file, refuses both forms at once, and checks TLS files", () => {
    const secret = file("pass", "hunter2\n");
    const ok = loadAgentConfig({ hostname: "h", env: { OUTPOST_MQTT__PASSWORD_FILE: secret } });
    assert.equal(ok.config.mqtt.password, "hunter2");
    const both = problems({ hostname: "h", env: { OUTPOST_MQTT__PASSWORD_FILE: secret, OUTPOST_MQTT__PASSWORD: "x" } });
    assert.match(find(both, "mqtt.passwordFile").expected, /at most one/);
    const missing = problems({ hostname: "h", env: { OUTPOST_MQTT__PASSWORD_FILE: join(dir, "nope") } });
    assert.match(find(missing, "mqtt.passwordFile").found, /ENOENT/);
    const tls = problems({
      hostname: "h",
      env: { OUTPOST_MQTT__CA: join(dir, "no-ca.pem"), OUTPOST_MQTT__CERT: secret },
    });
    assert.match(find(tls, "mqtt.key").expected, /cert and key together/);
    const unreadable = file("locked.pem", "x");
    chmodSync(unreadable, 0o000);
    const ca = problems({ hostname: "h", env: { OUTPOST_MQTT__CA: join(dir, "no-ca.pem") } });
    assert.match(find(ca, "mqtt.ca").found, /ENOENT/);
  });

  it("redacts secrets and keeps them out of the hash", () => {
    const a = loadAgentConfig({ hostname: "h", env: { OUTPOST_MQTT__PASSWORD: "one" } });
    const b = loadAgentConfig({ hostname: "h", env: { OUTPOST_MQTT__PASSWORD: "two" } });
    assert.equal(redact(a.config).mqtt.password, "<redacted>");
    assert.equal(a.config.mqtt.password, "one", "redact copies, it does not mutate");
    assert.equal(a.hash, b.hash);
    const c = loadAgentConfig({ hostname: "h", env: { OUTPOST_TELEMETRY__INTERVAL: "5s" } });
    assert.notEqual(a.hash, c.hash);
  });

  it("publishes a JSON Schema of the input, with defaults and no unknown keys allowed", () => {
    const schema = configJsonSchema() as {
      properties: Record<string, { properties: Record<string, { default?: unknown }>; additionalProperties?: boolean }>;
    };
    const mqtt = schema.properties.mqtt;
    assert.ok(mqtt);
    assert.equal(mqtt.additionalProperties, false);
    assert.equal(mqtt.properties.url?.default, "mqtt://127.0.0.1:1883");
    assert.equal(schema.properties.telemetry?.properties.interval?.default, "10s");
  });
});
