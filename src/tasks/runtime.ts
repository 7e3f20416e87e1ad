import { spawn } from "node:child_process";
import { createHash, type Hash, randomBytes } from "node:crypto";
import { type FileHandle, mkdir, open, readFile, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import * as sea from "node:sea";
import { pipeline } from "node:stream/promises";
import { pathToFileURL } from "node:url";
import { createZstdDecompress } from "node:zlib";
import { z } from "zod";
import { errorMessage, OutpostError } from "../core/errors.ts";
import { fsyncPath, writeFileAtomically } from "../core/files.ts";
import { NATIVE_ASSET, NATIVE_MANIFEST_ASSET, WORKER_ASSET } from "./runtime-assets.ts";
import type { WorkerSetup } from "./worker.ts";

/**
 * The native inference runtime as the build stores it in the binary (build/build.ts): the files of
 * onnxruntime-node for one arch, concatenated and zstd-compressed (asset `ort-native.zst`), described by this
 * manifest (asset `ort-native.json`).
 */
export interface NativeManifest {
  /** sha256 of the concatenated files, uncompressed: the name of the directory they are extracted to. */
  sha256: string;
  files: { name: string; size: number; sha256: string }[];
  /** The file `process.dlopen` loads; the others sit beside it (its RUNPATH is `$ORIGIN`). */
  binding: string;
}

/** Running as the single executable (the assets exist), or from a checkout (node_modules and the source). */
export const inBinary = (): boolean => sea.isSea();

/** The source a task worker starts from: the bundled worker inside the binary, an import of worker.ts otherwise. */
export function workerSource(): string {
  if (inBinary()) return sea.getAsset(WORKER_ASSET, "utf8");
  return `import(${JSON.stringify(pathToFileURL(join(import.meta.dirname, "worker.ts")).href)})`;
}

async function complete(dir: string, manifest: NativeManifest): Promise<boolean> {
  try {
    for (const f of manifest.files) if ((await stat(join(dir, f.name))).size !== f.size) return false;
    return true;
  } catch {
    return false;
  }
}

/**
 * Makes the native runtime loadable from `runtimeDir/<sha256>/` and returns the binding's path. The first start
 * decompresses, verifies every file's sha256, writes them under a temporary name, fsyncs and renames the
 * directory into place, so a crash leaves either nothing or a complete copy; a later start only checks the file
 * sizes. `data` is read only when extraction is needed, and streamed: decompressed whole (46 MiB for x64), the
 * runtime left the agent about 100 MiB bigger for the rest of its run.
 */
export async function extractNative(
  runtimeDir: string,
  manifest: NativeManifest,
  data: () => Uint8Array | ArrayBuffer,
): Promise<{ binding: string; extracted: boolean }> {
  const final = join(runtimeDir, manifest.sha256);
  const binding = join(final, manifest.binding);
  if (await complete(final, manifest)) return { binding, extracted: false };
  const tmp = join(runtimeDir, `.${manifest.sha256.slice(0, 12)}-${randomBytes(4).toString("hex")}.tmp`);
  try {
    await mkdir(runtimeDir, { recursive: true, mode: 0o755 });
    await mkdir(tmp, { mode: 0o755 });
    const input = new Uint8Array(data() as ArrayBuffer);
    await pipeline(slices(input, 1 << 20), createZstdDecompress(), (output) => writeFiles(tmp, manifest, output));
    fsyncPath(tmp);
    // A stale or partial copy (sizes wrong) goes; another process that got there first wins the rename.
    await rm(final, { recursive: true, force: true });
    try {
      await rename(tmp, final);
    } catch (err) {
      if (!(await complete(final, manifest))) throw err;
    }
    fsyncPath(runtimeDir);
    return { binding, extracted: true };
  } catch (err) {
    throw new OutpostError(
      "TASK_RUNTIME_UNAVAILABLE",
      `the native runtime cannot be extracted to ${runtimeDir}: ${errorMessage(err)}`,
      { cause: err },
    );
  } finally {
    await rm(tmp, { recursive: true, force: true }).catch(() => undefined);
  }
}

function* slices(data: Uint8Array, size: number): Generator<Uint8Array> {
  for (let offset = 0; offset < data.length; offset += size) yield data.subarray(offset, offset + size);
}

/**
 * Cuts the decompressed stream into the manifest's files, in order, each hashed and fsynced; the whole must be
 * exactly their sizes and match the manifest's sha256.
 */
async function writeFiles(dir: string, manifest: NativeManifest, output: AsyncIterable<Buffer>): Promise<void> {
  const whole = createHash("sha256");
  const files = manifest.files[Symbol.iterator]();
  let file: { name: string; size: number; sha256: string; left: number; hash: Hash; handle: FileHandle } | undefined;
  /** Closes the file that is complete and opens the next, past any empty ones; false when none is left. */
  const next = async (): Promise<boolean> => {
    while (!file || file.left === 0) {
      if (file) {
        if (file.hash.digest("hex") !== file.sha256) throw new Error(`${file.name} is damaged`);
        await file.handle.sync();
        await file.handle.close();
        file = undefined;
      }
      const f = files.next();
      if (f.done) return false;
      const handle = await open(join(dir, f.value.name), "wx", 0o755);
      file = { ...f.value, left: f.value.size, hash: createHash("sha256"), handle };
    }
    return true;
  };
  try {
    for await (const chunk of output) {
      whole.update(chunk);
      let rest: Uint8Array = chunk;
      while (rest.length > 0) {
        if (!(await next()) || !file) throw new Error("the stored runtime is longer than its manifest says");
        const piece = rest.subarray(0, Math.min(rest.length, file.left));
        file.hash.update(piece);
        await file.handle.write(piece);
        file.left -= piece.length;
        rest = rest.subarray(piece.length);
      }
    }
    if (await next()) throw new Error("the stored runtime is shorter than its manifest says");
  } finally {
    await file?.handle.close().catch(() => undefined);
  }
  const sha256 = whole.digest("hex");
  if (sha256 !== manifest.sha256) throw new Error(`the stored runtime is damaged (sha256 ${sha256})`);
}

/** Inside the binary: extracts the stored runtime (once) and returns its binding; from a checkout: undefined. */
export async function nativeBinding(
  runtimeDir: string,
): Promise<{ binding: string; extracted: boolean; sha256: string } | undefined> {
  if (!inBinary()) return undefined;
  const manifest = JSON.parse(sea.getAsset(NATIVE_MANIFEST_ASSET, "utf8")) as NativeManifest;
  return {
    ...(await extractNative(runtimeDir, manifest, () => sea.getRawAsset(NATIVE_ASSET))),
    sha256: manifest.sha256,
  };
}

/** A probe's verdict on one native runtime (by its sha256), kept beside it: `<runtimeDir>/<sha256>.probe.json`. */
const probeVerdict = z.strictObject({ ok: z.boolean(), reason: z.string(), at: z.string() });
type ProbeVerdict = z.infer<typeof probeVerdict>;
/** How long a probe may take (a cold start under emulation takes tens of seconds); past it, WASM this time only. */
const PROBE_TIMEOUT_MS = 120_000;

/**
 * Whether the native runtime works here, tried in a separate process: this binary, started as `probe-runtime`,
 * loads it and classifies a demo sample in a worker, as a task would. A crash there (a signal) or a failure is
 * remembered per runtime sha256, so a board whose native runtime crashes does not try it at every start; a
 * timeout is not (a busy machine). Deleting the verdict file tries again.
 */
async function probeNative(
  runtimeDir: string,
  sha256: string,
  binding: string,
): Promise<ProbeVerdict & { file: string; remembered: boolean; unavailable?: boolean }> {
  const file = join(runtimeDir, `${sha256}.probe.json`);
  try {
    const kept = probeVerdict.safeParse(JSON.parse(await readFile(file, "utf8")));
    if (kept.success) return { ...kept.data, file, remembered: true };
  } catch {
    // none yet, or unreadable: probe
  }
  const verdict = await new Promise<{ ok: boolean; reason: string; keep: boolean; unavailable?: boolean }>(
    (resolve) => {
      const child = spawn(process.execPath, ["probe-runtime", runtimeDir, binding], {
        stdio: ["ignore", "pipe", "pipe"],
        env: { ...process.env, ORT_DISABLE_TELEMETRY: "1" },
      });
      let out = "";
      let err = "";
      child.stdout.on("data", (d: Buffer) => {
        out = (out + d.toString()).slice(-4096);
      });
      child.stderr.on("data", (d: Buffer) => {
        err = (err + d.toString()).slice(-4096);
      });
      const timer = setTimeout(() => {
        child.kill("SIGKILL");
        resolve({ ok: false, reason: `the probe did not finish within ${PROBE_TIMEOUT_MS / 1000}s`, keep: false });
      }, PROBE_TIMEOUT_MS);
      child.on("error", (e) => {
        // This binary cannot be started again from here (seen: under qemu-user without binfmt_misc, ENOEXEC).
        clearTimeout(timer);
        resolve({
          ok: false,
          reason: `no probe process can be started here (${e.message})`,
          keep: false,
          unavailable: true,
        });
      });
      child.on("exit", (code, signal) => {
        clearTimeout(timer);
        const last = (err.trim().split("\n").pop() ?? "").slice(0, 300);
        const answer = /^\{"ok":(true|false)/m.exec(out);
        if (signal) resolve({ ok: false, reason: `crashed in a probe process (${signal})`, keep: true });
        else if (code === 0 && answer?.[1] === "true")
          resolve({ ok: true, reason: "a probe process ran the demo model", keep: true });
        else if (answer)
          resolve({ ok: false, reason: `failed in a probe process (exit ${code}): ${out.trim()}`, keep: true });
        // No answer: the probe never ran. Seen under qemu-user without binfmt_misc, where the kernel cannot
        // start an arm64 file and execvp hands it to /bin/sh (exit 2, "Syntax error").
        else
          resolve({
            ok: false,
            reason: `no probe process can be started here (exit ${code}: ${last})`,
            keep: false,
            unavailable: true,
          });
      });
    },
  );
  const result = { ok: verdict.ok, reason: verdict.reason, at: new Date().toISOString() };
  if (verdict.keep) {
    try {
      writeFileAtomically(file, `${JSON.stringify(result)}\n`, 0o644);
    } catch {
      // Not remembered (a read-only runtime directory): probed again at the next start.
    }
  }
  return { ...result, file, remembered: false, ...(verdict.unavailable ? { unavailable: true } : {}) };
}

export type RuntimeChoice = "auto" | "native" | "wasm";

/**
 * Which runtime the workers load, and why. `auto` takes the native one when it can be extracted here and a
 * probe process ran the demo model with it (not a failed load: an old glibc, a `noexec` runtime directory;
 * not a crash: the verdict is remembered per runtime), the WASM one otherwise; `native` loads it in this
 * process and fails with TASK_RUNTIME_UNAVAILABLE instead of falling back.
 */
export async function chooseRuntime(
  want: RuntimeChoice,
  runtimeDir: string,
): Promise<{ setup: Omit<WorkerSetup, "intraOpThreads">; note: string }> {
  let why = "tasks.runtime is wasm";
  if (want !== "wasm") {
    try {
      const native = await nativeBinding(runtimeDir);
      if (!native) return { setup: { runtime: "native" }, note: "onnxruntime-node from node_modules (a checkout)" };
      const how = native.extracted ? "extracted now" : "already extracted";
      let probed = "";
      if (want === "auto") {
        const probe = await probeNative(runtimeDir, native.sha256, native.binding);
        const when = probe.remembered ? `remembered from ${probe.at}, ${probe.file}` : "probed now";
        if (probe.unavailable) probed = `; ${probe.reason}: loaded in this process`;
        else if (!probe.ok)
          throw new OutpostError("TASK_RUNTIME_UNAVAILABLE", `onnxruntime-node ${probe.reason} (${when})`);
        else
          return {
            setup: { runtime: "native", binding: native.binding },
            note: `onnxruntime-node from the binary, ${how} to ${runtimeDir}; ${probe.reason} (${when})`,
          };
      }
      try {
        // Loaded once here to learn whether it can be: the library is mapped once per process, so the
        // workers' own loads cost little more.
        process.dlopen({ exports: {} }, native.binding);
      } catch (err) {
        throw new OutpostError("TASK_RUNTIME_UNAVAILABLE", `onnxruntime-node does not load: ${errorMessage(err)}`, {
          cause: err,
        });
      }
      return {
        setup: { runtime: "native", binding: native.binding },
        note: `onnxruntime-node from the binary, ${how} to ${runtimeDir}${probed}`,
      };
    } catch (err) {
      if (want === "native") throw err;
      why = `native unavailable: ${errorMessage(err)}`;
    }
  }
  const wasm = inBinary()
    ? "asset"
    : join(import.meta.dirname, "..", "..", "node_modules", "onnxruntime-web", "dist", "ort-wasm-simd-threaded.wasm");
  return { setup: { runtime: "wasm", wasm }, note: `onnxruntime-web (wasm, one thread per worker): ${why}` };
}
