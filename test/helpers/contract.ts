// What users see of the agent, captured for test/unit/contract.test.ts: the config file's JSON Schema, `config
// validate` (its hash), `config print` with and without --sources, the topics, the exit codes and the JSON Schemas
// of docs/mqtt-api.md. Regenerate the fixture (only for a change meant to be seen) with
//   node scripts/node24.mjs test/helpers/contract.ts . > test/fixtures/contract/contract.json && npx biome format --write test/fixtures/contract
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

export async function captureContract(checkout: string): Promise<Record<string, unknown>> {
  const root = resolve(checkout);
  const dir = mkdtempSync(join(tmpdir(), "outpost-contract-"));
  try {
    // Fixed paths, never created: the config's hash covers them, and it must not depend on a temporary name.
    const state = "/var/lib/outpost-contract";
    const file = join(dir, "config.yaml");
    writeFileSync(
      file,
      [
        "device: { id: line-3, groups: [line] }",
        "mqtt: { url: 'mqtt://broker.local:1883', keepalive: 45000ms, reconnectMax: 1.5m }",
        `state: { dir: ${state} }`,
        "outbox: { maxBytes: 32MiB, ttl: 2d }",
        "telemetry:",
        "  interval: 15s",
        "  fullInterval: 10m",
        '  deadbands: { "jetson.rails.*.watts": 1, cpu.load: 2 }',
        "resources: { interval: 90s, rssGrowth: 20MiB }",
        "update: { trialTimeout: 3m }",
        "tasks:",
        "  define:",
        "    hot: { type: threshold, metric: cpu.load, above: 90, for: 30s }",
        `    parts: { type: classify-image, model: /srv/outpost/m.onnx, labels: [ok, bad], input: { width: 8, height: 8 }, pass: { labels: [ok] }, watch: { dir: /srv/outpost/in, settle: 500ms }, timeout: 20s }`,
        "shutdown: { deadline: 12s }",
        "",
      ].join("\n"),
    );
    const cli = (...args: string[]) =>
      execFileSync(process.execPath, [join(root, "src", "main.ts"), ...args], {
        cwd: root,
        env: { PATH: process.env.PATH ?? "", HOME: dir },
        encoding: "utf8",
        stdio: ["ignore", "pipe", "ignore"],
      }).replaceAll(dir, "<dir>");
    const docs = readFileSync(join(root, "docs", "mqtt-api.md"), "utf8");
    const { deviceTopics } = await import(join(root, "src", "mqtt", "topics.ts"));
    const { EXIT } = await import(join(root, "src", "cli", "host.ts"));
    const t = deviceTopics("outpost", "line-3");
    const topics = Object.fromEntries(
      Object.entries(t).map(([k, v]) => [k, typeof v === "function" ? (v as (x: string) => string)("X") : v]),
    );
    return {
      topics,
      exitCodes: EXIT,
      configSchema: JSON.parse(cli("config", "schema")),
      validate: cli("config", "validate", file),
      print: cli("config", "print", file),
      sources: cli("config", "print", "--sources", file),
      docsSchemas: [...docs.matchAll(/```json\n(\{\n {2}"\$schema"[\s\S]*?)\n```/g)].map((m) => JSON.parse(m[1] ?? "")),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[2]) process.stdout.write(`${JSON.stringify(await captureContract(process.argv[2]), null, 2)}\n`);
