// Issue 22, item 1: every module's restartOnly/localOnly path names a key that exists in the schema, and is
// enforced: config.set refuses a local-only key and reports a restart-only one as waiting for a restart, and a
// local-only key in the stored overrides is dropped at start. (Paths qualified twice, `service.service.*`, let
// service.debugCommands be turned on remotely.)
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { stringify } from "yaml";
import { OVERRIDES_FILE } from "../../src/config/store.ts";
import { configJsonSchema, LOCAL_ONLY_KEYS, openConfigStore, RESTART_KEYS } from "../../src/schema.ts";

type Schema = {
  properties?: Record<string, Schema>;
  anyOf?: Schema[];
  oneOf?: Schema[];
  additionalProperties?: Schema;
};

/** The schema of a dotted path, or undefined when the configuration has no such key. */
function at(schema: Schema, path: string): Schema | undefined {
  let s: Schema | undefined = schema;
  for (const part of path.split(".")) {
    const options: Schema[] = s ? [s, ...(s.anyOf ?? []), ...(s.oneOf ?? [])] : [];
    s = options.map((o) => o.properties?.[part]).find((x) => x !== undefined);
    if (!s) return undefined;
  }
  return s;
}

/** A valid different value for each restart-only leaf of a module (kernel sections are whole sections). */
const RESTART_SAMPLES: Record<string, unknown> = {
  "log.format": "pretty",
  "telemetry.procRoot": "/tmp/proc-elsewhere",
  "telemetry.sysRoot": "/tmp/sys-elsewhere",
  "telemetry.hostRoot": "/tmp/host-elsewhere",
  "http.listen": "127.0.0.1:9999",
  "service.debugCommands": true,
  "resources.interval": "2m",
  "resources.windowSamples": 20,
  "resources.windows": 3,
  "resources.rssGrowth": "32MiB",
  "resources.heapGrowth": "16MiB",
  "resources.handleGrowth": 50,
};
const WHOLE_SECTIONS = ["device", "mqtt", "outbox", "state", "tasks"];

const patchOf = (path: string, value: unknown): Record<string, unknown> =>
  path
    .split(".")
    .reverse()
    .reduce<unknown>((v, part) => ({ [part]: v }), value) as Record<string, unknown>;

describe("config paths that modules declare", () => {
  const dir = mkdtempSync(join(tmpdir(), "outpost-config-paths-"));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, "config.yaml");
  writeFileSync(path, stringify({ device: { id: "d1" }, state: { dir: join(dir, "state") } }));
  const open = () => openConfigStore({ path, env: {}, hostname: "h" });

  it("every restart-only and local-only path exists in the schema", () => {
    const schema = configJsonSchema() as Schema;
    for (const p of [...RESTART_KEYS, ...LOCAL_ONLY_KEYS])
      assert.ok(at(schema, p), `${p} is not a key of the configuration`);
  });

  it("config.set refuses every local-only key", () => {
    for (const p of LOCAL_ONLY_KEYS) {
      const r = open().patch(patchOf(WHOLE_SECTIONS.includes(p) ? `${p}.anything` : p, true));
      assert.equal(r.ok, false, `${p} was accepted`);
      assert.match(JSON.stringify(r), /may be set remotely/, p);
    }
  });

  it("a local-only key in the stored overrides is dropped at start", () => {
    mkdirSync(join(dir, "state"), { recursive: true });
    writeFileSync(
      join(dir, "state", OVERRIDES_FILE),
      JSON.stringify({ format: 2, values: { service: { debugCommands: true }, telemetry: { interval: "3s" } } }),
    );
    try {
      const c = open().current().config;
      assert.equal(c.service.debugCommands, false);
      assert.equal(c.telemetry.interval, "3s", "the other overrides stay");
    } finally {
      rmSync(join(dir, "state", OVERRIDES_FILE), { force: true });
    }
  });

  it("config.set of a restart-only key is stored and reported as waiting for a restart", () => {
    const leaves = RESTART_KEYS.filter((p) => !WHOLE_SECTIONS.includes(p) && !LOCAL_ONLY_KEYS.includes(p));
    for (const p of leaves) {
      assert.ok(p in RESTART_SAMPLES, `no sample value for ${p}: add one`);
      const store = open();
      const r = store.patch(patchOf(p, RESTART_SAMPLES[p]));
      assert.equal(r.ok, true, `${p}: ${JSON.stringify(r)}`);
      assert.deepEqual(store.restartRequired(), [p]);
      store.patch(patchOf(p.split(".")[0] ?? p, null)); // back to the file's value for the next key
    }
  });
});
