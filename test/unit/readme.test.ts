// Issue 10 item 13: the README said Node >= 18 while package.json said >= 20, and its Debian package list
// missed mosquitto-clients and python3-cryptography.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { ROOT } from "../helpers/agent-process.ts";

const readme = readFileSync(join(ROOT, "README.md"), "utf8");

test("the README's Node requirement is package.json's engines field", () => {
  const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { engines: { node: string } };
  const major = /^>=(\d+)$/.exec(pkg.engines.node)?.[1];
  assert.ok(major);
  assert.match(readme, new RegExp(`\`npm install\` needs Node ≥ ${major} and npm`));
});

test("the README lists exactly the Debian packages scripts/install-deps.sh installs", () => {
  const script = readFileSync(join(ROOT, "scripts", "install-deps.sh"), "utf8");
  const installed = [...script.matchAll(/^\s+\[([a-z0-9.+-]+)\]=/gm)].map((m) => m[1]).sort();
  const listed = /<!-- debian-packages[^>]*-->([\s\S]*?)<!-- \/debian-packages -->/.exec(readme)?.[1];
  assert.ok(listed, "the README has the marked package list");
  assert.deepEqual(listed.trim().split(/\s+/).sort(), installed);
});

test("the README's configuration example is valid and has every section of the schema", async () => {
  const { parse } = await import("yaml");
  const { configSchema } = await import("../../src/schema.ts");
  const section = readme.slice(readme.indexOf("## Configuration"));
  const block = /```yaml\n([\s\S]*?)```/.exec(section)?.[1];
  assert.ok(block, "the Configuration section has a YAML example");
  // The one placeholder: a key the reader pastes in (a command key and a release key).
  const example = parse(block.replaceAll('"ed25519:..."', `"ed25519:${"A".repeat(43)}="`)) as Record<string, unknown>;
  const result = configSchema.safeParse(example);
  assert.ok(result.success, JSON.stringify(result.error?.issues));
  assert.deepEqual(Object.keys(example).sort(), Object.keys(configSchema.shape).sort());
});
