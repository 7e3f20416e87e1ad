// Issue 11: inference inside the built binaries. The native runtime is stored in the binary, extracted on the
// first task and only checked afterwards; x64 natively, arm64 under qemu-user (the fixtures only: it is slow).
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AgentProcess, ROOT } from "../helpers/agent-process.ts";
import { operatorKey } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { Watch } from "../helpers/mqtt-watch.ts";
import { Operator, PREFIX } from "../helpers/operator.ts";
import { assertClose, demoTasks, FIXTURES, sample } from "../helpers/parts-model.ts";

const ops = operatorKey();

const targets = [
  { name: "linux-x64", command: [join(ROOT, "dist", "outpost-linux-x64")], timeout: 20_000 },
  {
    name: "linux-arm64",
    command: ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", join(ROOT, "dist", "outpost-linux-arm64")],
    timeout: 120_000,
  },
];

describe("inference inside the built binaries", () => {
  let broker: Mosquitto;
  let watch: Watch;
  let operator: Operator;
  let dir: string;

  before(async () => {
    broker = await Mosquitto.start();
    watch = await Watch.open(broker.port, [`${PREFIX}/#`]);
    operator = await Operator.open(broker.port, ops);
    dir = mkdtempSync(join(tmpdir(), "outpost-e2e-tasks-"));
  });
  after(async () => {
    await operator.close();
    await watch.close();
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  function start(target: (typeof targets)[number], id: string, runtimeDir: string, runtime = "auto") {
    return AgentProcess.run(target.command, {
      device: { id },
      mqtt: { url: broker.url, reconnectMin: "100ms", reconnectMax: "1s" },
      commands: { trustedKeys: [{ name: "ops", key: ops.publicText, allow: ["*"] }] },
      tasks: { workers: 1, runtime, runtimeDir, define: demoTasks() },
    });
  }

  const online = (id: string, timeout: number) =>
    watch.waitForNext((m) => m.topic === `${PREFIX}/${id}/status` && m.json.state === "online", timeout, "online");

  /** The batch fixture, and the samples (x64) or two of them (arm64 under qemu is slow); returns the runtime. */
  async function fixtures(target: (typeof targets)[number], id: string): Promise<string> {
    const fixture = FIXTURES.tensors[0];
    assert.ok(fixture);
    const reply = await call(id, "parts", { feeds: fixture.inputs }, target.timeout);
    assert.equal(reply.state, "succeeded", JSON.stringify(reply.error));
    const r = reply.result as { runtime: string; outputs: Record<string, { data: number[] }> };
    assertClose(r.outputs.scores?.data ?? [], fixture.outputs.scores?.data ?? [], `${target.name} ${r.runtime} batch`);
    const samples = target.name === "linux-x64" ? FIXTURES.samples : FIXTURES.samples.slice(0, 2);
    for (const s of samples) {
      const c = await call(id, "inspect", { image: sample(s.sample).toString("base64") }, target.timeout);
      const v = c.result as { label: string; scores: Record<string, number> };
      assert.equal(v.label, s.label, s.sample);
      assertClose(
        FIXTURES.labels.map((l) => v.scores[l] ?? Number.NaN),
        s.scores,
        `${target.name} ${r.runtime} ${s.sample}`,
      );
    }
    return r.runtime;
  }

  const call = (id: string, task: string, input: unknown, timeoutMs: number) =>
    operator.call(id, "task.run", { task, input }, { timeoutMs }).then((r) => {
      const reply = r.finals[0];
      if (!reply) throw new Error(`no reply to task.run ${task} from ${id}`);
      return reply;
    });

  for (const target of targets) {
    it(`${target.name}: fixtures within 1e-4 of Python's onnxruntime, runtime extracted once`, async () => {
      const id = `e2e-tasks-${target.name}`;
      const runtimeDir = join(dir, target.name, "runtime");
      for (const round of [1, 2]) {
        const agent = start(target, id, runtimeDir);
        try {
          await online(id, target.timeout);
          assert.equal(await fixtures(target, id), "native");
          const ready = agent.logs().find((l) => l.msg === "inference runtime ready");
          assert.match(
            String(ready?.note),
            round === 1 ? /from the binary, extracted now/ : /from the binary, already extracted/,
          );
        } finally {
          assert.deepEqual(await agent.stop("SIGTERM"), { code: 0, signal: null });
          await agent.cleanup();
        }
      }
      // One directory named by the runtime's sha256, no temporary left behind.
      const entries = readdirSync(runtimeDir);
      assert.equal(entries.length, 1, entries.join(", "));
      assert.match(entries[0] ?? "", /^[0-9a-f]{64}$/);
      assert.ok(existsSync(join(runtimeDir, entries[0] ?? "", "libonnxruntime.so.1")));
    });
  }

  for (const target of targets) {
    it(`${target.name}: the WASM runtime matches the same fixtures within 1e-4`, async () => {
      const id = `e2e-wasm-${target.name}`;
      const agent = start(target, id, join(dir, target.name, "unused"), "wasm");
      try {
        await online(id, target.timeout);
        assert.equal(await fixtures(target, id), "wasm");
      } finally {
        await agent.cleanup();
      }
    });
  }

  it("linux-x64: a runtime directory that is not writable: auto falls back to WASM and says why", async () => {
    const target = targets[0];
    assert.ok(target);
    const id = "e2e-tasks-fallback";
    const file = join(dir, "a-file-too");
    writeFileSync(file, "");
    const agent = start(target, id, join(file, "runtime"));
    try {
      await online(id, target.timeout);
      const reply = await call(id, "inspect", { image: sample("good-1.png").toString("base64") }, target.timeout);
      assert.equal(reply.state, "succeeded", JSON.stringify(reply.error));
      assert.equal((reply.result as { runtime: string }).runtime, "wasm");
      const list = await operator.call(id, "task.list", undefined, { timeoutMs: target.timeout });
      const listed = list.finals[0]?.result as { runtime: { kind: string; note: string } } | undefined;
      const runtime = listed?.runtime ?? { kind: "no reply", note: "" };
      assert.equal(runtime.kind, "wasm");
      assert.match(runtime.note, /native unavailable: the native runtime cannot be extracted to .*a-file-too\/runtime/);
    } finally {
      await agent.cleanup();
    }
  });

  it("linux-x64: tasks.runtime native and a runtime directory that is not writable: TASK_RUNTIME_UNAVAILABLE, the agent stays up", async (t) => {
    const target = targets[0];
    assert.ok(target);
    const id = "e2e-tasks-nowrite";
    // A path under a regular file: not writable even for root (tests run as root in CI).
    const file = join(dir, "a-file");
    writeFileSync(file, "");
    const agent = start(target, id, join(file, "runtime"), "native");
    try {
      await online(id, target.timeout);
      for (let i = 0; i < 2; i++) {
        const reply = await call(id, "inspect", { image: sample("good-1.png").toString("base64") }, target.timeout);
        assert.equal(reply.state, "failed");
        assert.equal(reply.error?.code, "TASK_RUNTIME_UNAVAILABLE");
        assert.match(reply.error?.message ?? "", /cannot be extracted to .*a-file\/runtime/);
      }
      const ping = await operator.call(id, "ping", undefined, { timeoutMs: target.timeout });
      assert.equal(ping.finals[0]?.state, "succeeded");
      t.diagnostic("refused twice with TASK_RUNTIME_UNAVAILABLE; ping still answered");
    } finally {
      await agent.cleanup();
    }
  });
});
