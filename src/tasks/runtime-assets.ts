// Names of what build/build.ts stores in the binary for the tasks module (SEA assets).

/** onnxruntime-node's files for the target's arch, concatenated, zstd-compressed. */
export const NATIVE_ASSET = "ort-native.zst";
/** Their manifest (NativeManifest in runtime.ts). */
export const NATIVE_MANIFEST_ASSET = "ort-native.json";
/** onnxruntime-web's SIMD WebAssembly, brotli-compressed: the fallback runtime, the same on every arch. */
export const WASM_ASSET = "ort-wasm.br";
/** The task worker's own bundle, started from source. */
export const WORKER_ASSET = "task-worker.js";
