import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname } from "node:path";
import { it } from "node:test";
import { promisify } from "node:util";
import { AgentProcess, ROOT, sourceCommand } from "../helpers/agent-process.ts";
import { runCli } from "../helpers/cli.ts";

const run = promisify(execFile);

it("demo runs an embedded broker, the agent and a live view, and stops cleanly on Ctrl-C", async () => {
  const demo = new AgentProcess(sourceCommand(), ["demo", "--interval", "300ms"], {
    env: { OUTPOST_DEVICE__ID: "demo-box" },
  });
  try {
    await demo.stdout.waitFor((l) => l.startsWith("status demo-box online"), 20_000, "online in the view");
    // A second sample; seq counts every message of the device, the demo's task results too, so not seq=2.
    let samples = 0;
    const line = await demo.stdout.waitFor(
      (l) => l.startsWith("telemetry demo-box seq=") && ++samples === 2,
      20_000,
      "a second telemetry sample",
    );
    assert.match(line, /cpu=\d+(\.\d)?% mem=\d+MiB/);
    // The shipped model inspects the sample images a pretend camera drops into its watched folder.
    const first = await demo.stdout.waitFor((l) => l.startsWith("result demo-box "), 20_000, "a verdict");
    assert.match(first, /^result demo-box inspect 00000-chip-1\.png FAIL chip 1\.000 [\d.]+ ms$/);
    const exit = await demo.stop("SIGINT");
    assert.deepEqual(exit, { code: 0, signal: null });
    assert.ok(
      demo.stdout.items.some((l) => l.startsWith("status demo-box offline")),
      "offline shown before exit",
    );
    assert.ok(demo.stdout.items.includes("outpost demo: stopped"));
  } finally {
    await demo.cleanup();
  }
});

// Issue 10 item 7: on bbb3be8 closing the terminal (SIGHUP) exited 1 and left /tmp/outpost-demo-* behind, the
// agent warned that the demo's own broker refused MQTT 5, and the printed ctl line did not work from a checkout.
it("demo: SIGHUP stops it like Ctrl-C; the ctl line it prints works; no MQTT 5 warning", async () => {
  const demo = new AgentProcess(sourceCommand(), ["demo", "--interval", "300ms"], {
    env: { OUTPOST_DEVICE__ID: "demo-hup", PATH: process.env.PATH ?? "" },
  });
  try {
    await demo.stdout.waitFor((l) => l.startsWith("status demo-hup online"), 20_000, "online in the view");
    const header = demo.stdout.items.find((l) => l.startsWith("outpost demo: embedded broker")) ?? "";
    const log = /agent log (\S+)/.exec(header)?.[1] ?? "";
    assert.ok(existsSync(log), header);
    assert.ok(!readFileSync(log, "utf8").includes("refused MQTT 5"), "no fallback warning");
    const hint = demo.stdout.items.find((l) => l.startsWith("command it: ")) ?? "";
    const [cmd, ...args] = hint.slice("command it: ".length).split(" ");
    assert.equal(cmd, "npm", hint);
    const called = await run(cmd ?? "", args, { cwd: ROOT, env: { ...process.env, OUTPOST_CTL_BROKER: "" } });
    assert.match(called.stdout, /"device": "demo-hup"/);
    const exit = await demo.stop("SIGHUP");
    assert.deepEqual(exit, { code: 0, signal: null });
    assert.ok(demo.stdout.items.some((l) => l.startsWith("status demo-hup offline")));
    assert.ok(!existsSync(dirname(log)), "the demo's temp dir is removed");
  } finally {
    await demo.cleanup();
  }
});

it("demo --interval soon is a usage error naming the flag, and leaves nothing behind", async () => {
  const before = readdirSync(tmpdir()).filter((f) => f.startsWith("outpost-demo-")).length;
  const demo = new AgentProcess(sourceCommand(), ["demo", "--interval", "soon"]);
  try {
    const exit = await demo.exited;
    assert.equal(exit.code, 64);
    assert.match(demo.stderr.items.join("\n"), /--interval/);
    const after = readdirSync(tmpdir()).filter((f) => f.startsWith("outpost-demo-")).length;
    assert.equal(after, before);
  } finally {
    await demo.cleanup();
  }
});

// Issue 10 item 7: on bbb3be8 `npm start` returned 130 after Ctrl-C although the demo stopped cleanly (the
// shell between npm and the demo re-raised the SIGINT it had received).
it("npm start: Ctrl-C to the terminal's process group stops the demo and npm exits 0", async () => {
  const npm = spawn("npm", ["start"], {
    cwd: ROOT,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, OUTPOST_DEVICE__ID: "demo-npm" },
  });
  let out = "";
  npm.stdout.on("data", (c: Buffer) => {
    out += c.toString();
  });
  const exited = new Promise<number | null>((resolve) => npm.once("exit", (code) => resolve(code)));
  try {
    const started = Date.now();
    while (!out.includes("status demo-npm online") && Date.now() - started < 30_000) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.ok(out.includes("status demo-npm online"), out);
    process.kill(-(npm.pid as number), "SIGINT");
    assert.equal(await exited, 0);
    assert.ok(out.includes("outpost demo: stopped"));
  } finally {
    if (npm.exitCode === null) process.kill(-(npm.pid as number), "SIGKILL");
  }
});

// Issue 23 items 3, 8, 9 and 10: on 8ee023c `restart` in the demo answered and then nothing happened (ctl timed
// out), the demo printed no way to set ctl's broker and key once, config.set of the README's example answered
// changed: [] without saying that the demo's environment shadows the key, and a late `ctl watch` showed "-"
// for memory, disk and uptime until the next full sample (5 minutes).
it("demo: the README's commands behave as on a device", async () => {
  const demo = new AgentProcess(sourceCommand(), ["demo", "--interval", "300ms"], {
    env: { OUTPOST_DEVICE__ID: "demo-ops" },
  });
  try {
    await demo.stdout.waitFor((l) => l.startsWith("status demo-ops online"), 20_000, "online in the view");
    const exported = demo.stdout.items.find((l) => l.startsWith("or set once in a shell: export ")) ?? "";
    const env = Object.fromEntries(
      exported
        .slice("or set once in a shell: export ".length)
        .split(" ")
        .map((pair) => pair.split("=") as [string, string]),
    );
    // The demo pins its own device: ctl counts its signed answers with no step of the user's.
    assert.deepEqual(
      Object.keys(env).sort(),
      ["OUTPOST_CTL_BROKER", "OUTPOST_CTL_KEY", "OUTPOST_CTL_KNOWN_DEVICES"],
      exported,
    );

    const set = await runCli(
      ["ctl", "call", "demo-ops", "config.set", "--params", '{"patch":{"telemetry":{"interval":"5s"}}}'],
      env,
    );
    assert.equal(set.code, 0, set.err);
    // The demo's settings are a file, as on a device: the README's example changes the interval.
    assert.match(set.out, /"changed": \[\s*"telemetry\.interval"\s*\]/);
    assert.match(set.out, /"shadowed": \[\]/);

    // A viewer that starts now gets memory, disk and uptime at once, from the retained full sample.
    const watched = await runCli(["ctl", "watch", "demo-ops", "--json"], env, 3000);
    const bodies = watched.out
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { kind: string; body: { metrics?: Record<string, unknown> } });
    const first = bodies.find((b) => b.kind === "full" || b.kind === "telemetry");
    assert.ok(first?.body.metrics?.memory && first.body.metrics.uptime, watched.out.slice(0, 400));

    const onlines = () => demo.stdout.items.filter((l) => l.startsWith("status demo-ops online")).length;
    const before = onlines();
    const restarted = await runCli(["ctl", "call", "demo-ops", "restart", "--timeout", "60s"], env);
    assert.equal(restarted.code, 0, restarted.err + restarted.out);
    assert.match(restarted.out, /"restarted": true/);
    // The view goes on with the new process's status, on the same broker.
    await demo.stdout.waitFor(() => onlines() > before, 20_000, "online again");
    assert.deepEqual(await demo.stop("SIGINT"), { code: 0, signal: null });
  } finally {
    await demo.cleanup();
  }
});
