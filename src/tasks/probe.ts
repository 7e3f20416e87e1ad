// The probe process (`outpost probe-runtime RUNTIME_DIR BINDING`, started by the agent itself, never by hand):
// loads the native inference runtime the way a task worker does and classifies one of the demo's samples. A
// native runtime that crashes (seen: SIGSEGV under an emulated arm64) then takes down only this process, and
// the agent, told by its exit, uses the WASM runtime instead of crash-looping (runtime.ts remembers why).
import { randomBytes } from "node:crypto";
import { rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { countWorker } from "../core/threads.ts";
import { demoFiles } from "./demo.ts";
import { workerSource } from "./runtime.ts";
import type { WorkerInput, WorkerSetup } from "./worker.ts";

/** Runs the probe; resolves to the line to print (one JSON object) once the worker answered. */
export async function probeRuntime(runtimeDir: string, binding: string): Promise<{ ok: boolean; line: string }> {
  const demo = demoFiles();
  const sample = demo.samples[0];
  if (!sample) return { ok: false, line: JSON.stringify({ ok: false, error: "the demo has no sample" }) };
  const model = join(runtimeDir, `.probe-${randomBytes(4).toString("hex")}.onnx`);
  await writeFile(model, demo.model, { mode: 0o600 });
  const setup: WorkerSetup = { runtime: "native", binding, intraOpThreads: 1 };
  const worker = new Worker(workerSource(), { eval: true, workerData: setup });
  countWorker(worker);
  try {
    const input: WorkerInput = {
      op: "classify",
      model: { path: model },
      image: sample.bytes,
      input: { width: 64, height: 64, channels: 1, scale: 1 / 255, mean: [0], std: [1] },
    };
    const reply = await new Promise<{ ok: boolean; error?: { message: string } }>((resolve, reject) => {
      worker.on("message", (m: { id?: number; ok?: boolean; error?: { message: string } }) => {
        if (m.id === 1 && m.ok !== undefined) resolve({ ok: m.ok, ...(m.error ? { error: m.error } : {}) });
      });
      worker.once("error", reject);
      worker.once("exit", (code) => reject(new Error(`the worker exited with ${code}`)));
      worker.postMessage({ id: 1, input });
    });
    return { ok: reply.ok, line: JSON.stringify(reply.ok ? { ok: true } : { ok: false, error: reply.error?.message }) };
  } finally {
    await worker.terminate();
    await rm(model, { force: true });
  }
}
