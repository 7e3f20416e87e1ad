// Issue 23: every command line of the README (from its `readme-run` marker on) is run as written, against
// mosquitto and real agents started from this checkout, or is in SKIPPED with the reason. A `$ ` block's output
// is compared with what the command prints. On 8ee023c the README's error sample and arm64 size had drifted
// from what the program prints, and `--expect 12` asked for devices the example never had.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, it } from "node:test";
import { fingerprintOf } from "../../src/commands/keys.ts";
import { demoFiles, demoTask } from "../../src/tasks/demo.ts";
import { AgentProcess, ROOT, sourceCommand } from "../helpers/agent-process.ts";
import { runCli } from "../helpers/cli.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { pinAgent } from "../helpers/pins.ts";
import { tempDir } from "../helpers/temp.ts";

/** Lines not run here, each with why; every one must still be in the README (a stale entry fails). */
const SKIPPED: Record<string, string> = {
  "npm install && npm start": "the demo: test/integration/demo.test.ts runs it",
  "npm test": "this test is part of it",
  "npm run build": "npm test runs it before any test (pretest)",
  "scripts/deploy.sh --config config.yaml pi@pi-line-3 jetson-7":
    "needs devices over ssh: test/e2e/service.test.ts runs deploy.sh against a real sshd",
  "scp dist/outpost-linux-arm64 pi@pi-line-3:/tmp/outpost": "needs a device over ssh (deploy.sh does this)",
  "ssh pi@pi-line-3 sudo /tmp/outpost install --config /tmp/config.yaml":
    "installs as root on a device: test/e2e/install.test.ts runs install under real systemd",
  "npm run build -- --set-version 0.2.0": "a second build: test/e2e/release.test.ts builds another version",
  "outpost ctl update pi-line-3 releases/0.2.0-arm64":
    "an update needs an installed arm64 device: test/e2e/ota.test.ts updates an installed x64 agent",
};

/** The example's broker is replaced by this test's. */
const EXAMPLE_BROKER = "mqtts://broker.example:8883";
/** The fingerprint the README's pi-line-3 printed at install: replaced by this test's pi-line-3's. */
const EXAMPLE_FINGERPRINT = "SHA256:N//gl5iVuEZw72apPc7+RcR9i8S3J1x+gny+ylU3Njw";

interface Step {
  command: string;
  /** A `$ ` block's output, to compare. */
  output?: string[];
}

function steps(readme: string): Step[] {
  const from = readme.indexOf("<!-- readme-run:");
  assert.ok(from > 0, "the README has its readme-run marker");
  const out: Step[] = [];
  for (const m of readme.slice(from).matchAll(/^```(\w*)\n([\s\S]*?)^```$/gm)) {
    const [, kind, body = ""] = m;
    const lines = body.split("\n").filter((l) => l.trim() !== "");
    if (kind === "sh") {
      for (const line of lines) {
        if (line.startsWith("#")) continue;
        out.push({ command: line.replace(/\s{2,}#.*$/, "").trim() });
      }
    } else if (kind === "" && lines[0]?.startsWith("$ ")) {
      out.push({ command: lines[0].slice(2), output: lines.slice(1) });
    }
  }
  return out;
}

/** Shell words: quotes, and `~` at the start of a word (or after `=`) as the home directory. */
function words(line: string, home: string): string[] {
  const out: string[] = [];
  for (const m of line.matchAll(/'([^']*)'|"([^"]*)"|(\S+)/g)) {
    out.push(m[1] ?? m[2] ?? (m[3] ?? "").replace(/(^|=)~(?=\/|$)/g, `$1${home}`));
  }
  return out;
}

const readme = readFileSync(join(ROOT, "README.md"), "utf8");
const dir = tempDir("outpost-readme-");
const home = join(dir, "home");
const work = join(dir, "work");
let broker: Mosquitto;
const agents: AgentProcess[] = [];
const cwd = process.cwd();

before(async () => {
  mkdirSync(home, { recursive: true });
  mkdirSync(work, { recursive: true });
  // The examples run where a checkout's dist/ is.
  symlinkSync(join(ROOT, "dist"), join(work, "dist"));
  broker = await Mosquitto.start();
});
after(async () => {
  process.chdir(cwd);
  for (const a of agents) await a.cleanup();
  await broker.stop();
});

/** The example's devices: pi-line-3 with the task of the README's tasks example, and two more of line-3. */
async function startDevices(): Promise<void> {
  const ops = readFileSync(join(home, ".outpost", "ops.pub"), "utf8").trim();
  const demo = demoFiles();
  const model = join(dir, "parts.onnx");
  writeFileSync(model, demo.model);
  const sample = demo.samples[0];
  assert.ok(sample);
  writeFileSync(
    join(work, "request.json"),
    JSON.stringify({ task: "inspect", input: { image: Buffer.from(sample.bytes).toString("base64") } }),
  );
  for (const id of ["pi-line-3", "pi-line-4", "pi-line-5"]) {
    agents.push(
      AgentProcess.run(sourceCommand(), {
        device: { id, groups: ["line-3"] },
        mqtt: { url: broker.url },
        commands: { trustedKeys: [{ name: "ops", key: ops, allow: ["*"] }] },
        ...(id === "pi-line-3"
          ? { tasks: { workers: 1, define: { inspect: demoTask(model, join(dir, "camera")) } } }
          : {}),
      }),
    );
  }
  await Promise.all(agents.map((a) => a.waitForLog("mqtt connected", 30_000)));
  // pi-line-4 and -5 as scripts/deploy.sh leaves them (pinned); pi-line-3 the README pins by its fingerprint.
  for (const [i, id] of [
    [1, "pi-line-4"],
    [2, "pi-line-5"],
  ] as const) {
    const agent = agents[i];
    assert.ok(agent);
    await pinAgent(join(home, ".outpost", "known_devices"), broker.url, id, agent);
  }
}

it("runs every command line of the README, or says why not", async () => {
  const all = steps(readme);
  const env: Record<string, string> = { HOME: home };
  const ran: string[] = [];
  process.chdir(work);
  for (const step of all) {
    const { command } = step;
    if (Object.hasOwn(SKIPPED, command)) continue;
    ran.push(command);
    const [first, ...args] = words(command, home);
    if (first === "export") {
      for (const pair of args) {
        const [name, ...value] = pair.split("=");
        env[name ?? ""] = value.join("=").replace(EXAMPLE_BROKER, broker.url);
      }
      continue;
    }
    if (first === "./dist/outpost-linux-x64") {
      const printed = execFileSync(join(work, first), args, { encoding: "utf8" }).trim();
      const expected = (step.output ?? []).join("\n").replace(/\(([0-9a-f]{12})\)/, "(COMMIT)");
      assert.equal(printed.replace(/\(([0-9a-f]{12})\)/, "(COMMIT)"), expected, command);
      continue;
    }
    assert.equal(first, "outpost", `a README line this test does not know how to run: ${command}`);
    if (args[0] === "ctl" && agents.length === 0) await startDevices();
    if (step.output) {
      // The README's error sample: bad.yaml and the variable it describes.
      writeFileSync(join(work, "bad.yaml"), "mqtt:\n  url: http://x\n  urll: 3\n");
      const r = await runCli(args, { ...env, OUTPOST_TELEMETRY__INTERVAL: "soon" });
      assert.equal(r.code, 78, command);
      assert.deepEqual(r.err.trimEnd().split("\n"), step.output, command);
      continue;
    }
    const pi3 = () => fingerprintOf(readFileSync(join(agents[0]?.dir ?? "", "state", "device.pub"), "utf8").trim());
    const r = await runCli(
      args.map((a) => (a === EXAMPLE_FINGERPRINT ? pi3() : a)),
      env,
    );
    assert.equal(r.code, 0, `${command}\n${r.err}${r.out.slice(0, 2000)}`);
    if (args[1] === "devices") assert.match(r.out, /^pi-line-3 +online/m);
    if (args[1] === "config") assert.match(r.out, new RegExp(`^broker +${broker.url}  # OUTPOST_CTL_BROKER$`, "m"));
  }
  // Each skipped line is still in the README, so that this list cannot go stale.
  const commands = all.map((s) => s.command);
  for (const skipped of Object.keys(SKIPPED)) assert.ok(commands.includes(skipped), `not in the README: ${skipped}`);
  assert.ok(ran.length >= 12, ran.join("\n"));
});

it("the README's binary sizes are the built binaries' (within 1 MiB, as the code changes)", () => {
  const m = /Sizes: ([\d.]+) MiB \(x64\) and ([\d.]+) MiB \(arm64\)/.exec(readme);
  assert.ok(m, "the README states the sizes");
  for (const [arch, stated] of [
    ["x64", m[1]],
    ["arm64", m[2]],
  ] as const) {
    const actual = statSync(join(ROOT, "dist", `outpost-linux-${arch}`)).size / 1024 / 1024;
    assert.ok(
      Math.abs(actual - Number(stated)) < 1,
      `${arch}: the README says ${stated} MiB, the build is ${actual.toFixed(1)}`,
    );
  }
});
