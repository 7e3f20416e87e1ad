// Issue 21, item 7: onnxruntime-node sends telemetry by default (a device id under ~/.cache/Microsoft, an event
// queue, /tmp/mat-debug-<pid>.log). The built agent turns it off before the binding loads. Run with a fresh
// HOME and TMPDIR under strace: after a native inference, none of those files exist and every connection the
// agent opened went to its broker.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AgentProcess, ROOT } from "../helpers/agent-process.ts";
import { operatorKey } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { Watch } from "../helpers/mqtt-watch.ts";
import { Operator, PREFIX } from "../helpers/operator.ts";
import { demoTasks, sample } from "../helpers/parts-model.ts";

const BIN = join(ROOT, "dist", "outpost-linux-x64");
const ops = operatorKey();

/** Files a process made in /tmp since `since` whose name onnxruntime's telemetry uses. */
function matLogs(dir: string, since: number): string[] {
  return readdirSync(dir).filter((f) => /^mat-debug-\d+\.log$/.test(f) && statSync(join(dir, f)).mtimeMs >= since);
}

describe("nothing phones home (the built x64 agent, native inference)", () => {
  let broker: Mosquitto;
  let watch: Watch;
  let operator: Operator;
  let dir: string;

  before(async () => {
    broker = await Mosquitto.start();
    watch = await Watch.open(broker.port, [`${PREFIX}/#`]);
    operator = await Operator.open(broker.port, ops);
    dir = mkdtempSync(join(tmpdir(), "outpost-e2e-phone-"));
  });
  after(async () => {
    await operator?.close();
    await watch?.close();
    await broker?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("no onnxruntime telemetry files, and every connection goes to the broker", async () => {
    const home = join(dir, "home");
    const tmp = join(dir, "tmp");
    mkdirSync(home);
    mkdirSync(tmp);
    const since = Date.now() - 1000;
    const trace = join(dir, "connect.log");
    const id = "e2e-no-phone-home";
    const agent = AgentProcess.run(
      ["strace", "-f", "-qq", "-e", "trace=connect", "-o", trace, BIN],
      {
        device: { id },
        mqtt: { url: `mqtt://127.0.0.1:${broker.port}`, reconnectMin: "100ms", reconnectMax: "1s" },
        commands: { trustedKeys: [{ name: "ops", key: ops.publicText, allow: ["*"] }] },
        tasks: { workers: 1, runtime: "native", runtimeDir: join(dir, "runtime"), define: demoTasks() },
      },
      { HOME: home, TMPDIR: tmp },
    );
    try {
      await watch.waitFor((m) => m.topic === `${PREFIX}/${id}/status` && m.json.state === "online", 30_000, "online");
      const run = await operator.call(
        id,
        "task.run",
        { task: "inspect", input: { image: sample("good-1.png").toString("base64") } },
        { timeoutMs: 30_000 },
      );
      assert.equal(run.finals[0]?.state, "succeeded", JSON.stringify(run.finals[0]));
      assert.equal((run.finals[0]?.result as { runtime?: string } | undefined)?.runtime, "native");
      // The telemetry's own thread writes a moment after the first session: give it that moment.
      await new Promise((r) => setTimeout(r, 2000));
    } finally {
      // strace's death would leave the agent it traces running: the agent goes first, then strace with it.
      const traced = spawnSync("pgrep", ["-P", String(agent.child.pid)], { encoding: "utf8" }).stdout;
      for (const pid of traced.split("\n").filter(Boolean)) process.kill(Number(pid), "SIGKILL");
      await agent.cleanup();
    }
    assert.equal(existsSync(join(home, ".cache", "Microsoft")), false, "onnxruntime wrote its device id under HOME");
    assert.deepEqual(matLogs(tmp, since), []);
    assert.deepEqual(matLogs("/tmp", since), []);
    const connects = readFileSync(trace, "utf8")
      .split("\n")
      .filter((l) => /connect\(/.test(l));
    assert.ok(connects.length > 0, "strace saw no connection at all");
    const elsewhere = connects.filter(
      (l) => !l.includes(`sin_port=htons(${broker.port}), sin_addr=inet_addr("127.0.0.1")`),
    );
    assert.deepEqual(elsewhere, []);
  });
});
