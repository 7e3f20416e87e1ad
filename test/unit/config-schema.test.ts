// Issue 10 item 6: an editor with `outpost config schema` must catch what `config validate` catches. On bbb3be8
// durations, sizes and the URL were plain strings: ajv found 1 problem where validate found 7.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, it } from "node:test";
import Ajv2020 from "ajv/dist/2020.js";
import { parse } from "yaml";
import type { ConfigProblem } from "../../src/config/load.ts";
import { configJsonSchema, loadAgentConfig } from "../../src/schema.ts";

/** Rules a JSON Schema cannot express (README, "What the schema cannot check"). */
// The README's list; the readable files (ca, cert, key, passwordFile) are checked in the same pass as the schema.
const CROSS_FIELD = [
  "mqtt.reconnectMax",
  "mqtt.passwordFile",
  "mqtt.ca",
  "mqtt.cert",
  "mqtt.key",
  "telemetry.interval",
];

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "outpost-schema-"));
});
after(() => rmSync(dir, { recursive: true, force: true }));

const ajv = new Ajv2020.default({ allErrors: true, strict: false });
const validate = ajv.compile(configJsonSchema() as object);

function byValidate(text: string): string[] {
  const path = join(dir, "c.yaml");
  writeFileSync(path, text);
  try {
    loadAgentConfig({ path, hostname: "h" });
    return [];
  } catch (err) {
    return [...new Set((err as { details: ConfigProblem[] }).details.map((p) => p.path))].sort();
  }
}

function byEditor(text: string): string[] {
  if (validate(parse(text))) return [];
  const paths = (validate.errors ?? []).map((e) => {
    const base = e.instancePath.split("/").filter(Boolean).join(".");
    const extra = (e.params as { additionalProperty?: string }).additionalProperty;
    return extra ? (base ? `${base}.${extra}` : extra) : base;
  });
  return [...new Set(paths)].sort();
}

it("a file with seven problems: the schema finds all seven", () => {
  const text = [
    "mqtt: { url: 'http://x', keepalive: 5 }",
    "telemetry: { interval: soon }",
    "outbox: { window: -3, maxBytes: '12' }",
    "log: { level: loud }",
    "bogus: 1",
  ].join("\n");
  const found = byValidate(text);
  assert.equal(found.length, 7, found.join(", "));
  assert.deepEqual(byEditor(text), found);
});

it("what only validate can catch is exactly the documented list", () => {
  const text = [
    "mqtt: { reconnectMin: 2m, reconnectMax: 1m, password: x, passwordFile: /x, cert: /c }",
    "telemetry: { interval: 10ms }",
  ].join("\n");
  const found = byValidate(text);
  assert.deepEqual(byEditor(text), []);
  for (const path of found) assert.ok(CROSS_FIELD.includes(path), `${path} is not documented as schema-blind`);
});

it("a good file passes both", () => {
  const text = "mqtt: { url: 'mqtts://broker:8883' }\ntelemetry: { interval: 5s }\noutbox: { maxBytes: 128MiB }\n";
  assert.deepEqual(byValidate(text), []);
  assert.deepEqual(byEditor(text), []);
});
