// The task worker: runs in a worker thread, answers the pool's `{ id, type, input }` with `{ id, ok, value }`.
// Inside the single executable it is a separate esbuild bundle started from source; from a checkout, the pool
// imports this file. It loads the inference runtime on first use and keeps one session per model file.
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { parentPort, workerData } from "node:worker_threads";
import { brotliDecompressSync } from "node:zlib";
import type { InferenceSession, Tensor as OrtTensor } from "onnxruntime-common";
import { errorMessage, isOutpostError, OutpostError } from "../core/errors.ts";
import { type ProfileKind, profileThread } from "../core/profile.ts";
import { type ImageInput, imageTensor } from "./image.ts";
import { WASM_ASSET } from "./runtime-assets.ts";
import { checkFeeds, type InputSpec, type Tensor, type TensorData, type TensorType } from "./tensors.ts";

export interface WorkerSetup {
  runtime: "native" | "wasm";
  /** native: the extracted `onnxruntime_binding.node` (inside the binary); absent: from node_modules. */
  binding?: string;
  /** wasm: the `.wasm` file's path (a checkout), or `asset` (the binary's compressed copy). */
  wasm?: string;
  intraOpThreads: number;
}

export interface ModelRef {
  path: string;
}

/** What the worker is asked to do; the pool's task `type` is the task's name (its breaker), not this. */
export type WorkerInput =
  | { op: "describe"; model: ModelRef }
  | { op: "infer"; model: ModelRef; feeds: Record<string, Tensor>; outputs?: string[] }
  | { op: "classify"; model: ModelRef; image: Uint8Array; input: ImageInput; inputName?: string };

export interface ModelInfo {
  sha256: string;
  inputs: InputSpec[];
  outputs: InputSpec[];
}

export interface InferOutput {
  model: ModelInfo;
  outputs: Record<string, Tensor>;
  /** Time spent in the runtime's run() alone, ms. */
  inferMs: number;
}

type Ort = typeof import("onnxruntime-node");

const setup = (workerData ?? { runtime: "native", intraOpThreads: 1 }) as WorkerSetup;
let ort: Promise<Ort> | undefined;
let runtimeLoaded = false;
interface Entry {
  loaded: Promise<{ session: InferenceSession; info: ModelInfo }>;
  /** Tasks using the session now: it is released only once none is. */
  users: number;
  /** The session is created. */
  settled?: boolean;
}
const sessions = new Map<string, Entry>();
/** The model files the runner still uses (current and candidate models); undefined until it says. */
let retained: Set<string> | undefined;

/** Releases every session of a model the runner no longer names and no task is using. */
function sweep(): void {
  if (!retained) return;
  for (const [path, entry] of sessions) {
    if (retained.has(path) || entry.users > 0) continue;
    sessions.delete(path);
    entry.loaded.then(
      ({ session }) => session.release(),
      () => {},
    );
  }
}

/** What the pool shows of this worker (`task.list`). */
const state = () => ({ sessions: sessions.size });

/** onnxruntime-web's WASM build, single-threaded in this worker, from bytes we hand it (nothing fetched). */
async function wasmRuntime(): Promise<Ort> {
  const web = await import("onnxruntime-web/wasm");
  let binary: Uint8Array;
  if (setup.wasm === "asset") {
    const sea = await import("node:sea");
    binary = brotliDecompressSync(new Uint8Array(sea.getRawAsset(WASM_ASSET)));
  } else {
    binary = await readFile(setup.wasm ?? "");
  }
  web.env.wasm.wasmBinary = binary;
  // More than one thread would start web workers of its own; the pool is the parallelism.
  web.env.wasm.numThreads = 1;
  web.env.wasm.proxy = false;
  return web as unknown as Ort;
}

function runtime(): Promise<Ort> {
  if (ort !== undefined) return ort;
  ort = (async () => {
    try {
      if (setup.runtime === "wasm") return await wasmRuntime();
      if (setup.binding) {
        // The bundle's copy of onnxruntime-node takes its binding from here (build/build.ts rewrites its require).
        const binding = { exports: {} as unknown };
        process.dlopen(binding, setup.binding);
        (globalThis as { __outpostOrtBinding?: unknown }).__outpostOrtBinding = binding.exports;
      }
      return await import("onnxruntime-node");
    } catch (err) {
      const which = setup.runtime === "wasm" ? "onnxruntime-web (wasm)" : "onnxruntime-node";
      throw new OutpostError("TASK_RUNTIME_UNAVAILABLE", `${which} does not load: ${errorMessage(err)}`, {
        cause: err,
      });
    }
  })();
  ort.then(
    () => {
      runtimeLoaded = true;
    },
    () => {},
  );
  return ort;
}

function specs(metadata: readonly InferenceSession.ValueMetadata[]): InputSpec[] {
  return metadata.map((m) =>
    m.isTensor
      ? { name: m.name, type: m.type, shape: m.shape.map((d) => (typeof d === "number" ? d : String(d))) }
      : { name: m.name, type: "non-tensor", shape: [] },
  );
}

function load(model: ModelRef): Promise<{ session: InferenceSession; info: ModelInfo }> {
  let entry = sessions.get(model.path);
  if (!entry) {
    const loaded = (async () => {
      const { InferenceSession } = await runtime();
      let bytes: Buffer;
      try {
        bytes = await readFile(model.path);
      } catch (err) {
        throw new OutpostError("TASK_MODEL_INVALID", `model ${model.path}: ${errorMessage(err)}`, { cause: err });
      }
      try {
        const session = await InferenceSession.create(
          bytes,
          setup.runtime === "wasm"
            ? { executionProviders: ["wasm"], graphOptimizationLevel: "all" }
            : {
                // One thread per session: the pool's workers are the parallelism. No spinning: an idle spinning
                // session burns tens of ms of CPU per second (DESIGN.md, Inference).
                intraOpNumThreads: setup.intraOpThreads,
                interOpNumThreads: 1,
                executionMode: "sequential",
                graphOptimizationLevel: "all",
                extra: { session: { intra_op: { allow_spinning: "0" }, inter_op: { allow_spinning: "0" } } },
              },
        );
        const sha256 = createHash("sha256").update(bytes).digest("hex");
        return {
          session,
          info: { sha256, inputs: specs(session.inputMetadata), outputs: specs(session.outputMetadata) },
        };
      } catch (err) {
        throw new OutpostError("TASK_MODEL_INVALID", `model ${model.path} does not load: ${errorMessage(err)}`, {
          cause: err,
        });
      }
    })();
    const created: Entry = { loaded, users: 0 };
    entry = created;
    sessions.set(model.path, created);
    loaded.then(
      () => {
        created.settled = true;
      },
      // A failed load is not kept: the file may be fixed (or the model updated) before the next task.
      () => {
        if (sessions.get(model.path) === created) sessions.delete(model.path);
      },
    );
  }
  return entry.loaded;
}

/** Runs `fn` with the model's session held: a sweep meanwhile leaves it alone. */
async function using<T>(model: ModelRef, fn: () => Promise<T>): Promise<T> {
  void load(model); // the entry exists from here on (a failed load removes itself; its rejection is handled)
  const entry = sessions.get(model.path);
  if (entry) entry.users += 1;
  try {
    return await fn();
  } finally {
    if (entry) entry.users -= 1;
    sweep();
  }
}

/**
 * What a task tells the pool of its loads: `loading` when it needs one (the runtime, a model's session not yet
 * held), then `ready` once it has what it needs and starts the work (infer, classify; a `describe` is all load
 * and says nothing more). A task that needs no load says neither: a message less. A `classify` that loads
 * decodes its image inside the load bound, as before.
 */
interface Phases {
  loading(): void;
  ready(): void;
}

/** Loaded already: the runtime, and the model's session. */
const holds = (model: ModelRef) => runtimeLoaded && sessions.get(model.path)?.settled === true;

async function infer(
  model: ModelRef,
  feeds: Record<string, Tensor>,
  outputs: string[] | undefined,
  phases: Phases,
): Promise<InferOutput> {
  const ortModule = await runtime();
  const { session, info } = await load(model);
  checkFeeds(info.inputs, feeds);
  const ortFeeds: Record<string, OrtTensor> = {};
  for (const [name, t] of Object.entries(feeds)) {
    ortFeeds[name] = new ortModule.Tensor(t.type, t.data as Float32Array, t.dims);
  }
  // Runtime and session are loaded (compiling WebAssembly under emulation takes seconds): the task's own
  // timeout starts now.
  phases.ready();
  const started = performance.now();
  let result: InferenceSession.ReturnType;
  try {
    result = outputs ? await session.run(ortFeeds, outputs) : await session.run(ortFeeds);
  } catch (err) {
    throw new OutpostError("TASK_FAILED", `inference failed: ${errorMessage(err)}`, { cause: err });
  }
  const inferMs = performance.now() - started;
  const out: Record<string, Tensor> = {};
  for (const [name, t] of Object.entries(result)) {
    out[name] = { type: t.type as TensorType, dims: [...t.dims], data: t.data as TensorData };
  }
  return { model: info, outputs: out, inferMs };
}

async function handle(input: WorkerInput, phases: Phases): Promise<unknown> {
  if (!holds(input.model)) phases.loading();
  switch (input.op) {
    case "describe":
      return using(input.model, async () => (await load(input.model)).info);
    case "infer":
      return using(input.model, () => infer(input.model, input.feeds, input.outputs, phases));
    case "classify":
      return using(input.model, async () => {
        const { info } = await load(input.model);
        const name = input.inputName ?? info.inputs[0]?.name;
        if (name === undefined) throw new OutpostError("TASK_MODEL_INVALID", "the model has no input");
        return infer(input.model, { [name]: await imageTensor(input.image, input.input) }, undefined, phases);
      });
  }
}

/** What the runner tells every worker: the model files still in use (`{retain: [...]}`). */
export interface WorkerControl {
  retain: string[];
}

type Message =
  | { id: number; input: WorkerInput }
  | { cancel: number }
  | { control: WorkerControl }
  | { profile: { id: number; kind: ProfileKind; ms: number } };

/**
 * Tasks run one at a time, in the order they came: the pool sends a busy worker its next task ahead
 * (PoolOptions.prefetch). `waiting` holds those not started; a cancel of one of them makes it `skipped`.
 */
let chain: Promise<void> = Promise.resolve();
const waiting = new Set<number>();
const cancelled = new Set<number>();

async function runTask(id: number, input: WorkerInput): Promise<void> {
  waiting.delete(id);
  if (cancelled.delete(id)) {
    parentPort?.postMessage({ id, skipped: true });
    return;
  }
  try {
    let loading = false;
    const phases: Phases = {
      loading: () => {
        if (!loading) parentPort?.postMessage({ id, loading: true });
        loading = true;
      },
      ready: () => {
        if (loading) parentPort?.postMessage({ id, ready: true });
        loading = false;
      },
    };
    const value = await handle(input, phases);
    parentPort?.postMessage({ id, ok: true, value, state: state() });
  } catch (err) {
    parentPort?.postMessage({
      id,
      ok: false,
      error: { message: errorMessage(err), code: isOutpostError(err) ? err.code : undefined },
      state: state(),
    });
  }
}

parentPort?.on("message", async (message: Message) => {
  if ("profile" in message) {
    const { id, kind, ms } = message.profile;
    try {
      parentPort?.postMessage({ profiled: id, ok: true, value: await profileThread(kind, ms) });
    } catch (err) {
      parentPort?.postMessage({ profiled: id, ok: false, error: errorMessage(err) });
    }
    return;
  }
  if ("control" in message) {
    retained = new Set(message.control.retain);
    sweep();
    parentPort?.postMessage({ control: true, state: state() });
    return;
  }
  if ("cancel" in message) {
    // One already started (or over) is not stopped here: the pool gives it its grace, or drops its answer.
    if (waiting.has(message.cancel)) cancelled.add(message.cancel);
    return;
  }
  const { id, input } = message;
  waiting.add(id);
  // runTask answers every failure itself; should a post throw, the tasks after it must still run.
  chain = chain.then(() => runTask(id, input)).catch(() => {});
});
