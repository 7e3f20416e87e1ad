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

// Issue 23 item 12: on 8ee023c `npm install` warned about protobufjs's install script (onnxruntime-web's
// dependency), which neither allowScripts nor the README covered.
test("every dependency with an install script is decided in allowScripts and named in the README", () => {
  const lock = JSON.parse(readFileSync(join(ROOT, "package-lock.json"), "utf8")) as {
    packages: Record<string, { hasInstallScript?: boolean }>;
  };
  const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { allowScripts: Record<string, boolean> };
  const scripted = Object.entries(lock.packages)
    .filter(([path, p]) => path !== "" && p.hasInstallScript)
    .map(([path]) => path.replace(/^.*node_modules\//, ""))
    .sort();
  assert.deepEqual(Object.keys(pkg.allowScripts).sort(), scripted);
  const paragraph = readme.slice(readme.indexOf("allowScripts"), readme.indexOf("`npm test` (and `npm run build`)"));
  for (const name of scripted) assert.ok(paragraph.includes(name), `the README's allowScripts paragraph names ${name}`);
});

// Issue 23 item 12: on 8ee023c `npm run build` as root installed the test packages too (sshd, prometheus,
// systemd, qemu); it needs only the build's.
test("npm run build installs only the build's packages, and the README names them", () => {
  const script = readFileSync(join(ROOT, "scripts", "install-deps.sh"), "utf8");
  const block = /declare -A build=\(([\s\S]*?)\)/.exec(script)?.[1] ?? "";
  const build = [...block.matchAll(/\[([a-z0-9.+-]+)\]=/g)].map((m) => m[1]).sort();
  assert.ok(!build.some((p) => /mosquitto|prometheus|systemd|qemu|openssh/.test(p ?? "")), build.join(" "));
  const named = /needs\s+when one is missing \(([^)]*)\)/.exec(readme)?.[1] ?? "";
  assert.deepEqual(named.split(/,\s*/).sort(), build);
  const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { scripts: Record<string, string> };
  assert.equal(pkg.scripts.prebuild, "bash scripts/install-deps.sh build");
  assert.match(pkg.scripts.pretest ?? "", /install-deps\.sh test/);
});

// Issue 23 item 2: on 8ee023c `config print --sources` crashed on this very example (the dotted deadband key).
test("the README's configuration example passes config validate and config print --sources", async () => {
  const { writeFileSync } = await import("node:fs");
  const { tempDir } = await import("../helpers/temp.ts");
  const { runCli } = await import("../helpers/cli.ts");
  const dir = tempDir("outpost-readme-config-");
  const section = readme.slice(readme.indexOf("## Configuration"));
  const block = /```yaml\n([\s\S]*?)```/.exec(section)?.[1] ?? "";
  const path = join(dir, "config.yaml");
  writeFileSync(path, block.replaceAll('"ed25519:..."', `"ed25519:${"A".repeat(43)}="`));
  // The example names a device's files: readable stand-ins, by the environment.
  const env: Record<string, string> = { OUTPOST_STATE__DIR: join(dir, "state") };
  writeFileSync(join(dir, "pw"), "secret\n");
  env.OUTPOST_MQTT__PASSWORD_FILE = join(dir, "pw");
  for (const key of ["ca", "cert", "key"]) {
    writeFileSync(join(dir, `${key}.pem`), "-----BEGIN X-----\n");
    env[`OUTPOST_MQTT__${key.toUpperCase()}`] = join(dir, `${key}.pem`);
  }
  const validated = await runCli(["config", "validate", path], env);
  assert.equal(validated.code, 0, validated.err);
  const printed = await runCli(["config", "print", path, "--sources"], env);
  assert.equal(printed.code, 0, printed.err);
  assert.match(printed.out, /^telemetry\.deadbands\."jetson\.rails\.\*\.watts" = 1 {2}# in /m);
  assert.match(printed.out, /^mqtt\.ca = .* {2}# from OUTPOST_MQTT__CA$/m);
  assert.match(printed.out, /^outbox\.window = 64 {2}# in /m);
});
