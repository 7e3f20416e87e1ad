// Issue 11: inference tasks in the agent, from source, with real worker threads, onnxruntime-node and mosquitto.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import Ajv2020 from "ajv/dist/2020.js";
import { PNG } from "pngjs";
import { AgentProcess, ROOT, sourceCommand } from "../helpers/agent-process.ts";
import { operatorKey } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { type Received, Watch } from "../helpers/mqtt-watch.ts";
import { Operator, PREFIX } from "../helpers/operator.ts";
import { assertClose, DEMO, demoTasks, FIXTURES, MODEL, sample } from "../helpers/parts-model.ts";
import { freePort } from "../helpers/ports.ts";
import { run } from "../helpers/run.ts";

const ops = operatorKey();
const ID = "dev-tasks";

/** The result's JSON Schema as docs/mqtt-api.md gives it: every published result must fit it. */
const resultSchema = (() => {
  const doc = readFileSync(join(ROOT, "docs", "mqtt-api.md"), "utf8");
  const block = [...doc.matchAll(/```json\n([\s\S]*?)```/g)]
    .map((m) => m[1] ?? "")
    .find((b) => b.includes('"$id": "outpost/v1/result"'));
  assert.ok(block, "docs/mqtt-api.md has the result schema");
  const ajv = new Ajv2020.default({ allErrors: true, strict: false });
  return { validate: ajv.compile(JSON.parse(block)), ajv };
})();

const online = (m: Received) => m.topic === `${PREFIX}/${ID}/status` && m.json.state === "online";

describe("tasks: inference in worker threads", () => {
  let broker: Mosquitto;
  let watch: Watch;
  let operator: Operator;
  let agent: AgentProcess;
  let dir: string;
  let httpPort: number;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "outpost-tasks-"));
    const notOnnx = join(dir, "not-a-model.onnx");
    writeFileSync(notOnnx, "this is not an ONNX file\n");
    broker = await Mosquitto.start();
    watch = await Watch.open(broker.port, [`${PREFIX}/#`]);
    operator = await Operator.open(broker.port, ops);
    httpPort = await freePort();
    agent = AgentProcess.run(sourceCommand(), {
      device: { id: ID },
      http: { listen: `127.0.0.1:${httpPort}` },
      mqtt: { url: broker.url, reconnectMin: "50ms", reconnectMax: "500ms" },
      commands: { trustedKeys: [{ name: "ops", key: ops.publicText, allow: ["*"] }] },
      telemetry: { interval: "200ms" },
      tasks: {
        workers: 1,
        define: demoTasks({
          missing: { type: "onnx", model: join(dir, "absent.onnx") },
          garbage: { type: "onnx", model: notOnnx },
          both: { type: "checks", checks: ["strict", "inspect"] },
          "up-at-all": { type: "threshold", metric: "uptime.seconds", above: 0, for: "0s" },
          ticker: {
            ...(demoTasks().inspect as object),
            schedule: { every: "200ms", file: join(DEMO, "samples", "scratch-1.png") },
          },
          "no-input": { type: "onnx", model: MODEL, schedule: { every: "200ms", file: join(dir, "absent.json") } },
        }),
      },
    });
    await watch.waitFor(online, 15_000, "online");
  });
  after(async () => {
    if (process.env.DEBUG_TASKS)
      for (const l of agent.stdout.items) if (!l.includes('"level":30')) console.log(l.slice(0, 400));
    await agent.cleanup();
    await operator.close();
    await watch.close();
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const task = (name: string, input: unknown) => operator.final(ID, "task.run", { task: name, input });
  const image = (name: string) => ({ image: sample(name).toString("base64") });

  it("task.list names every task", async () => {
    const reply = await operator.final(ID, "task.list");
    assert.equal(reply.state, "succeeded");
    const list = reply.result as {
      tasks: Record<string, { type: string }>;
      pool: { size: number; sizeFrom: string; idleRelease: string };
    };
    // Issue 27: which rule set the pool's size (here tasks.workers; by default cores and memory), and whether
    // an idle worker is released (off by default).
    assert.deepEqual([list.pool.size, list.pool.sizeFrom, list.pool.idleRelease], [1, "tasks.workers", "never"]);
    assert.deepEqual(Object.keys(list.tasks).sort(), [
      "both",
      "garbage",
      "inspect",
      "missing",
      "no-input",
      "parts",
      "strict",
      "ticker",
      "up-at-all",
    ]);
  });

  it("a schedule runs its task on a file every period; an unreadable file skips the run and nothing else", async () => {
    const ticks = (m: Received) => m.topic === `${PREFIX}/${ID}/results/ticker`;
    await watch.waitFor(() => watch.items.filter(ticks).length >= 2, 15_000, "two scheduled results");
    for (const m of watch.items.filter(ticks)) {
      assert.equal(m.json.source, "schedule");
      assert.equal(m.json.label, "scratch");
      assert.deepEqual((m.json.input as { file: string }).file, "scratch-1.png");
    }
    await agent.waitForLog("scheduled run skipped: its input file cannot be read");
    assert.ok(!watch.items.some((m) => m.topic.endsWith("/results/no-input")));
  });

  it("a threshold rule over telemetry raises its alarm: an event and a retained state", async () => {
    const event = await watch.waitFor((m) => m.topic === `${PREFIX}/${ID}/alarms/up-at-all`, 15_000, "alarm event");
    assert.equal(event.json.active, true);
    assert.equal(event.json.metric, "uptime.seconds");
    assert.equal(event.json.limit, "above 0");
    const late = await Watch.open(broker.port, [`${PREFIX}/${ID}/alarms/up-at-all/state`]);
    try {
      const state = await late.waitFor(() => true, 5000, "retained alarm state");
      assert.equal(state.retain, true);
      assert.equal(state.json.active, true);
    } finally {
      await late.close();
    }
  });

  it("the tensor task matches Python's onnxruntime within 1e-4, with model, runtime and trace in the result", async () => {
    for (const fixture of FIXTURES.tensors) {
      const reply = await task("parts", { feeds: fixture.inputs });
      assert.equal(reply.state, "succeeded", JSON.stringify(reply.error));
      const result = reply.result as Record<string, unknown>;
      const scores = (result.outputs as Record<string, { dims: number[]; data: number[] }>).scores;
      const expected = fixture.outputs.scores;
      assert.deepEqual(scores?.dims, expected?.dims);
      assertClose(scores?.data ?? [], expected?.data ?? [], fixture.name);
      assert.equal(result.runtime, "native");
      assert.match(String((result.model as { sha256: string }).sha256), /^[0-9a-f]{64}$/);
      assert.equal(result.trace, reply.id, "the trace is the request's id");
      const published = await watch.waitFor(
        (m) => m.topic === `${PREFIX}/${ID}/results/parts` && m.json.trace === reply.id,
        10_000,
        "the result on results/parts",
      );
      assert.ok(typeof published.json.seq === "number" && typeof published.json.queueMs === "number");
    }
  });

  it("classify-image: each sample's scores within 1e-4, its label and verdict", async () => {
    for (const s of FIXTURES.samples) {
      const reply = await task("inspect", image(s.sample));
      assert.equal(reply.state, "succeeded", JSON.stringify(reply.error));
      const r = reply.result as { label: string; verdict: string; scores: Record<string, number> };
      assert.equal(r.label, s.label, s.sample);
      assert.equal(r.verdict, s.label === "good" ? "pass" : "fail", s.sample);
      assertClose(
        FIXTURES.labels.map((l) => r.scores[l] ?? Number.NaN),
        s.scores,
        s.sample,
      );
    }
  });

  it("bad inputs get their codes, change nothing, and the agent and other tasks go on", async () => {
    const tensor = FIXTURES.tensors[0]?.inputs.image;
    assert.ok(tensor);
    const cases: [string, string, unknown, RegExp][] = [
      [
        "inspect",
        "TASK_INPUT_INVALID",
        { image: Buffer.from([0xff, 0xd8, 0xff, 0xe0, 1, 2, 3]).toString("base64") },
        /decode/,
      ],
      ["inspect", "TASK_INPUT_INVALID", { image: Buffer.from("GIF89a....").toString("base64") }, /not a PNG or JPEG/],
      [
        "parts",
        "TASK_INPUT_INVALID",
        { feeds: { image: { type: "float32", dims: [1, 1, 32, 32], data: Array(1024).fill(0) } } },
        /expected float32 \[batch,1,64,64\], found float32 \[1,1,32,32\]/,
      ],
      [
        "parts",
        "TASK_INPUT_INVALID",
        { feeds: { image: { type: "int32", dims: [1, 1, 64, 64], data: Array(4096).fill(0) } } },
        /expected float32/,
      ],
      ["parts", "TASK_INPUT_INVALID", { feeds: { pixels: tensor } }, /no input pixels/],
      ["parts", "TASK_INPUT_INVALID", { feeds: { image: { ...tensor, dims: [2, 1, 64, 64] } } }, /need 32768 bytes/],
      ["parts", "TASK_INPUT_INVALID", { image: "aGVsbG8=" }, /takes tensors/],
      ["missing", "TASK_MODEL_INVALID", { feeds: { image: tensor } }, /ENOENT/],
      ["garbage", "TASK_MODEL_INVALID", { feeds: { image: tensor } }, /does not load/],
      ["nosuch", "TASK_UNKNOWN", { feeds: {} }, /no task "nosuch"/],
    ];
    for (const [name, code, input, message] of cases) {
      const reply = await task(name, input);
      assert.equal(reply.state, "failed", `${name} ${JSON.stringify(input).slice(0, 80)}`);
      assert.equal(reply.error?.code, code, reply.error?.message);
      assert.match(reply.error?.message ?? "", message);
    }
    // Every result published so far, the failed ones too, fits the documented schema.
    const results = watch.items.filter((m) => m.topic.startsWith(`${PREFIX}/${ID}/results/`));
    assert.ok(results.some((m) => m.json.ok === false) && results.some((m) => m.json.ok === true));
    for (const m of results) {
      assert.ok(
        resultSchema.validate(m.json),
        `${m.topic}: ${resultSchema.ajv.errorsText(resultSchema.validate.errors)}`,
      );
    }
    const params = await operator.final(ID, "task.run", { task: "parts", input: { feeds: {}, image: "" } });
    assert.equal(params.error?.code, "BAD_PARAMS");
    assert.match(params.error?.message ?? "", /params\.input: expected either image .* or feeds .*, found both/);
    // A request never names a device path: the tasks section changes only in the file.
    const set = await operator.final(ID, "config.set", {
      patch: { tasks: { define: { x: { type: "onnx", model: "/etc/shadow" } } } },
    });
    assert.equal(set.error?.code, "BAD_PARAMS");
    assert.match(set.error?.message ?? "", /tasks/);
    // Bad inputs are the caller's fault: they do not open the task's breaker.
    const good = await task("inspect", image("good-1.png"));
    assert.equal(good.state, "succeeded");
    assert.equal((good.result as { verdict: string }).verdict, "pass");
    const list = (await operator.final(ID, "task.list")).result as {
      pool: { started: boolean; workers: number };
      tasks: Record<string, { breaker: string; counts: Record<string, number>; sha256: string | null }>;
    };
    assert.equal(list.pool.started, true);
    assert.equal(list.tasks.inspect?.breaker, "closed");
    assert.equal(list.tasks.parts?.sha256, FIXTURES.tensors.length > 0 ? list.tasks.inspect?.sha256 : null);
    assert.equal(list.tasks.missing?.counts.failed, 1);
    assert.ok(MODEL.endsWith("parts.onnx"));
  });

  it("/metrics counts results by task and outcome, and shows the pool; promtool finds nothing to say", async () => {
    const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
    const value = (series: string) =>
      Number(new RegExp(`^${series.replace(/[{}]/g, "\\$&")} (\\S+)$`, "m").exec(text)?.[1]);
    assert.ok(value('outpost_task_results_total{task="inspect",outcome="pass"}') >= 2, text);
    assert.ok(value('outpost_task_results_total{task="inspect",outcome="error"}') >= 2);
    assert.ok(value('outpost_task_results_total{task="missing",outcome="error"}') === 1);
    assert.equal(value("outpost_task_workers"), 1);
    assert.ok(value('outpost_task_run_seconds_count{task="parts"}') >= 1);
    const file = join(dir, "metrics.txt");
    writeFileSync(file, text);
    const lint = await run(["sh", "-c", `promtool check metrics < ${file}`]);
    assert.deepEqual([lint.code, lint.stdout + lint.stderr], [0, ""], "promtool check metrics");
  });

  it("checks: the first failing check cancels the others and the verdict names it", async () => {
    // One worker: strict runs first and fails on a scratched part; inspect, dispatched to the worker the moment
    // strict answered, is cancelled while it runs. It finishes within the pool's grace, its result dropped, and
    // the worker stays: replacing it reloaded the runtime and the model on every failed part (in a CI run that
    // kept the next call waiting past its 10 s).
    const replaced = async () =>
      ((await operator.final(ID, "task.list")).result as { pool: { replaced?: number } }).pool.replaced ?? 0;
    const before = await replaced();
    const reply = await task("both", image("scratch-2.png"));
    assert.equal(reply.state, "succeeded", JSON.stringify(reply.error));
    const r = reply.result as { verdict: string; failedCheck: string; checks: Record<string, unknown> };
    assert.equal(r.verdict, "fail");
    assert.equal(r.failedCheck, "strict");
    assert.deepEqual(r.checks.inspect, { cancelled: true });
    const pass = await task("both", image("good-1.png"));
    const p = pass.result as { verdict: string; checks: Record<string, { verdict: string }> };
    assert.equal(p.verdict, "pass");
    assert.equal(p.checks.strict?.verdict, "pass");
    assert.equal(p.checks.inspect?.verdict, "pass");
    assert.equal(await replaced(), before, "no worker was replaced");
  });
});

describe("tasks: the WASM runtime (onnxruntime-web), chosen in the configuration", () => {
  it("matches the same fixtures within 1e-4, and task.list says which runtime and why", async () => {
    const broker = await Mosquitto.start();
    const operator = await Operator.open(broker.port, ops);
    const watch = await Watch.open(broker.port, [`${PREFIX}/#`]);
    const id = "dev-wasm";
    const agent = AgentProcess.run(sourceCommand(), {
      device: { id },
      mqtt: { url: broker.url, reconnectMin: "50ms", reconnectMax: "500ms" },
      commands: { trustedKeys: [{ name: "ops", key: ops.publicText, allow: ["*"] }] },
      tasks: { workers: 1, runtime: "wasm", define: demoTasks() },
    });
    try {
      await watch.waitFor((m) => m.topic === `${PREFIX}/${id}/status` && m.json.state === "online", 15_000, "online");
      // Nothing scheduled or watched here: no worker, and no runtime loaded, until the first task.
      const before = (await operator.final(id, "task.list")).result as { pool: { started: boolean } };
      assert.equal(before.pool.started, false);
      for (const fixture of FIXTURES.tensors) {
        const reply = await operator.final(id, "task.run", { task: "parts", input: { feeds: fixture.inputs } });
        assert.equal(reply.state, "succeeded", JSON.stringify(reply.error));
        const r = reply.result as { runtime: string; outputs: Record<string, { data: number[] }> };
        assert.equal(r.runtime, "wasm");
        assertClose(r.outputs.scores?.data ?? [], fixture.outputs.scores?.data ?? [], `wasm ${fixture.name}`);
      }
      for (const s of FIXTURES.samples) {
        const reply = await operator.final(id, "task.run", {
          task: "inspect",
          input: { image: sample(s.sample).toString("base64") },
        });
        const r = reply.result as { label: string; scores: Record<string, number> };
        assert.equal(r.label, s.label);
        assertClose(
          FIXTURES.labels.map((l) => r.scores[l] ?? Number.NaN),
          s.scores,
          `wasm ${s.sample}`,
        );
      }
      const list = (await operator.final(id, "task.list")).result as { runtime: { kind: string; note: string } };
      assert.equal(list.runtime.kind, "wasm");
      assert.match(list.runtime.note, /tasks\.runtime is wasm/);
    } finally {
      await agent.cleanup();
      await watch.close();
      await operator.close();
      await broker.stop();
    }
  });
});

/** Readable names of the images (not the result files) in one of the folder's subdirectories. */
function images(dir: string, sub: string): string[] {
  return readdirSync(join(dir, sub)).filter((n) => !n.endsWith(".json") && !n.startsWith("."));
}

/** `count` distinct PNGs (one pixel differs), every tenth one truncated so that it cannot decode. */
function camera(count: number): { name: string; bytes: Buffer }[] {
  const base = PNG.sync.read(sample("good-1.png"));
  return Array.from({ length: count }, (_, i) => {
    const png = new PNG({ width: base.width, height: base.height });
    base.data.copy(png.data);
    png.data[(i % 4096) * 4] = (i * 7) % 256;
    png.data[((i + 100) % 4096) * 4] = i >> 8;
    const bytes = PNG.sync.write(png);
    const broken = Buffer.concat([bytes.subarray(0, 60), Buffer.from(`cut ${i}`)]);
    return { name: `frame-${String(i).padStart(4, "0")}.png`, bytes: i % 10 === 9 ? broken : bytes };
  });
}

describe("tasks: a watched folder across SIGKILLs", () => {
  it("200 images, the agent killed twice: each ends once in done/ or failed/, one distinct result per image", async () => {
    const broker = await Mosquitto.start();
    const watch = await Watch.open(broker.port, [`${PREFIX}/+/results/#`]);
    const home = mkdtempSync(join(tmpdir(), "outpost-watch-"));
    const folder = join(home, "camera");
    const id = "dev-watch";
    const config = {
      device: { id },
      mqtt: { url: broker.url, reconnectMin: "50ms", reconnectMax: "500ms" },
      tasks: {
        workers: 1,
        define: demoTasks({
          inspect: { ...(demoTasks().inspect as object), watch: { dir: folder, settle: "0s", poll: "20ms" } },
        }),
      },
    };
    const frames = camera(200);
    assert.equal(new Set(frames.map((f) => createHash("sha256").update(f.bytes).digest("hex"))).size, 200);
    const processed = () => images(folder, "done").length + images(folder, "failed").length;
    const until = async (what: string, ok: () => boolean) => {
      const deadline = Date.now() + 60_000;
      while (!ok()) {
        if (agent.child.exitCode !== null) throw new Error(`the agent exited: ${agent.stderr.items.join("\n")}`);
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    };
    let agent = AgentProcess.run(sourceCommand(), config, {}, home);
    try {
      await until("the folder", () => existsSync(join(folder, "inbox")));
      // The camera: writes each frame beside the inbox, then renames it in (what settle 0s relies on).
      const dropping = (async () => {
        for (const f of frames) {
          writeFileSync(join(folder, `.${f.name}`), f.bytes);
          renameSync(join(folder, `.${f.name}`), join(folder, "inbox", f.name));
          await new Promise((r) => setTimeout(r, 4));
        }
      })();
      for (const killAt of [40, 110]) {
        await until(`${killAt} processed`, () => processed() >= killAt);
        await agent.stop("SIGKILL");
        agent = AgentProcess.run(sourceCommand(), config, {}, home);
      }
      await dropping;
      await until("all 200 processed", () => processed() === 200);
      assert.deepEqual(images(folder, "inbox"), []);
      assert.deepEqual(readdirSync(join(folder, "work")), []);
      const done = images(folder, "done");
      const failed = images(folder, "failed");
      assert.deepEqual([...done, ...failed].sort(), frames.map((f) => f.name).sort(), "each image exactly once");
      assert.equal(failed.length, 20, "the truncated frames");
      // Exactly one distinct result per image at the broker: a copy (QoS 1, or republished after a crash)
      // carries the same image hash and trace.
      const hashes = new Map(frames.map((f) => [createHash("sha256").update(f.bytes).digest("hex"), f.name]));
      const seen = () => new Set(watch.items.map((m) => (m.json.input as { sha256: string }).sha256));
      await watch
        .waitFor(() => seen().size >= 200, 30_000, "a result for every image")
        .catch((err: Error) => {
          const missing = [...hashes].filter(([sha]) => !seen().has(sha)).map(([, name]) => name);
          throw new Error(`${err.message}: ${seen().size} arrived; missing ${missing.join(", ")}`);
        });
      const traces = new Map<string, Set<string>>();
      for (const m of watch.items) {
        const sha = (m.json.input as { sha256: string }).sha256;
        assert.ok(hashes.has(sha), "a result for an image that was dropped");
        const set = traces.get(sha) ?? new Set();
        set.add(String(m.json.trace));
        traces.set(sha, set);
      }
      assert.equal(traces.size, 200);
      for (const [sha, set] of traces) assert.equal(set.size, 1, `${hashes.get(sha)}: ${[...set].join(", ")}`);
      // The result file beside each image carries the same trace as the message.
      for (const name of done) {
        const stored = JSON.parse(readFileSync(join(folder, "done", `${name}.json`), "utf8")) as { trace: string };
        const sha = createHash("sha256")
          .update(readFileSync(join(folder, "done", name)))
          .digest("hex");
        assert.ok(traces.get(sha)?.has(stored.trace), name);
      }
    } finally {
      await agent.cleanup();
      await watch.close();
      await broker.stop();
      rmSync(home, { recursive: true, force: true });
    }
  });
});
