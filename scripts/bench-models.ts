// npm run bench -- --only models: issue 21, item 6. The agent's RSS as a task's model is updated 20 times, with
// a 32 MB model on 2 workers: each update is a new file, so a worker that kept every session would grow by a
// session per update (the issue saw 128 to 1,051 MiB after 6 updates).
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateKeys, parsePrivateKey } from "../src/commands/keys.ts";
import { makeRelease } from "../src/ota/release.ts";
import { AgentProcess } from "../test/helpers/agent-process.ts";
import { operatorKey } from "../test/helpers/commands.ts";
import { processMemory } from "../test/helpers/memory.ts";
import type { Mosquitto } from "../test/helpers/mosquitto.ts";
import { Operator } from "../test/helpers/operator.ts";
import { RangeServer } from "../test/helpers/range-server.ts";
import type { BenchRow } from "./bench-board.ts";

// A minimal protobuf writer: enough of ONNX's ModelProto for y = MatMul(x, W).
const varint = (n: number): number[] => {
  const out: number[] = [];
  let v = n;
  while (v > 127) {
    out.push((v & 127) | 128);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return out;
};
const field = (n: number, bytes: Uint8Array | number[]) =>
  Buffer.concat([Buffer.from([...varint((n << 3) | 2), ...varint(bytes.length)]), Buffer.from(bytes)]);
const int = (n: number, v: number) => Buffer.from([...varint(n << 3), ...varint(v)]);
const str = (n: number, s: string) => field(n, Buffer.from(s));
const valueInfo = (name: string, dims: number[]) =>
  Buffer.concat([
    str(1, name),
    field(2, field(1, Buffer.concat([int(1, 1), field(2, Buffer.concat(dims.map((d) => field(1, int(1, d)))))]))),
  ]);

/** An ONNX model y[1, cols] = x[1, rows] W[rows, cols] with float32 weights: rows * cols * 4 bytes. */
function matmulModel(rows: number, cols: number): Buffer {
  const weights = Buffer.alloc(rows * cols * 4);
  for (let i = 0; i < rows * cols; i += 997) weights.writeFloatLE((i % 13) / 13, i * 4);
  const tensor = Buffer.concat([int(1, rows), int(1, cols), int(2, 1), str(8, "W"), field(9, weights)]);
  const node = Buffer.concat([str(1, "x"), str(1, "W"), str(2, "y"), str(4, "MatMul")]);
  const graph = Buffer.concat([
    field(1, node),
    str(2, "bench"),
    field(5, tensor),
    field(11, valueInfo("x", [1, rows])),
    field(12, valueInfo("y", [1, cols])),
  ]);
  return Buffer.concat([int(1, 8), field(8, int(2, 13)), field(7, graph)]);
}

export async function modelRows(rows: BenchRow[], o: { bin: string; broker: Mosquitto }): Promise<void> {
  const UPDATES = 20;
  const dir = mkdtempSync(join(tmpdir(), "outpost-bench-models-"));
  const ops = operatorKey();
  const releaseKey = generateKeys();
  const file = join(dir, "big.onnx");
  writeFileSync(file, matmulModel(4096, 2048)); // 32 MiB of weights
  const signed: unknown[] = [];
  for (let i = 1; i <= UPDATES; i++)
    signed[i] = makeRelease({
      file,
      privateKey: parsePrivateKey(releaseKey.privatePem),
      out: join(dir, "www", String(i)),
      kind: "model",
      version: `1.0.${i}`,
      now: 1,
    }).signed;
  const server = await RangeServer.start(join(dir, "www"));
  const operator = await Operator.open(o.broker.port, ops);
  const id = "bench-models";
  const agent = AgentProcess.run([o.bin], {
    device: { id },
    mqtt: { url: o.broker.url },
    commands: { trustedKeys: [{ name: "ops", key: ops.publicText, allow: ["*"] }] },
    update: { trustedKeys: [releaseKey.publicText] },
    tasks: { workers: 2, define: { big: { type: "onnx", model: file } } },
  });
  const feeds = { x: { type: "float32", dims: [1, 4096], data: Array(4096).fill(0.5) } };
  const work = () =>
    Promise.all(
      Array.from({ length: 4 }, () =>
        operator.call(id, "task.run", { task: "big", input: { feeds } }, { timeoutMs: 60_000 }),
      ),
    );
  const curve: number[] = [];
  let sessions: number[] = [];
  try {
    await agent.waitForLog("mqtt connected", 30_000);
    for (let i = 0; i <= UPDATES; i++) {
      if (i > 0) {
        const r = await operator.call(
          id,
          "update",
          { manifest: signed[i], source: { http: server.url(`${i}/`) }, task: "big" },
          { timeoutMs: 120_000 },
        );
        const state = (r.finals[0]?.result as { state?: string } | undefined)?.state;
        if (state !== "committed") throw new Error(`update ${i}: ${JSON.stringify(r.finals[0])}`);
      }
      await work();
      curve.push(processMemory(agent.child.pid ?? 0).rss);
    }
    const list = await operator.call(id, "task.list", undefined, { timeoutMs: 10_000 });
    sessions = (list.finals[0]?.result as { pool?: { sessions?: number[] } } | undefined)?.pool?.sessions ?? [];
  } finally {
    await agent.cleanup();
    await operator.close();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  const at = (k: number) => curve[k] ?? Number.NaN;
  const note = "32 MiB model, 2 workers, 4 runs after each update; bare = before any update";
  for (const k of [1, 5, 10, 20])
    rows.push({ metric: `RSS after ${k} model updates`, outpost: at(k), bare: at(0), unit: "MiB", note });
  rows.push({
    metric: "sessions per worker after 20 updates",
    outpost: Math.max(...sessions),
    unit: "count",
    note: `task.list: ${JSON.stringify(sessions)}; curve ${curve.map((v) => v.toFixed(0)).join(" ")}`,
  });
}
