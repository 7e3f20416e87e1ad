import { OutpostError } from "../core/errors.ts";

/** The tensor element types a request may carry, and the typed array each one travels in. */
export const ARRAYS = {
  float32: Float32Array,
  float64: Float64Array,
  int8: Int8Array,
  uint8: Uint8Array,
  int16: Int16Array,
  uint16: Uint16Array,
  int32: Int32Array,
  uint32: Uint32Array,
  int64: BigInt64Array,
  bool: Uint8Array,
} as const;
export type TensorType = keyof typeof ARRAYS;
export const TENSOR_TYPES = Object.keys(ARRAYS) as TensorType[];

export type TensorData =
  | Float32Array
  | Float64Array
  | Int8Array
  | Uint8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | BigInt64Array;

/** A tensor as it crosses to and from a worker (typed arrays are copied by postMessage, never serialised). */
export interface Tensor {
  type: TensorType;
  dims: number[];
  data: TensorData;
}

/** What the model says an input must be: its element type and shape (a string or -1 for a free axis). */
export interface InputSpec {
  name: string;
  type: string;
  shape: readonly (number | string)[];
}

function describeShape(shape: readonly (number | string)[]): string {
  return `[${shape.join(",")}]`;
}

/**
 * Checks a request's tensors against the model's inputs before anything runs: every input given and no other,
 * each of the model's element type and shape (a named or negative axis takes any length).
 */
export function checkFeeds(specs: readonly InputSpec[], feeds: Readonly<Record<string, Tensor>>): void {
  const known = new Set(specs.map((s) => s.name));
  for (const name of Object.keys(feeds)) {
    if (!known.has(name)) {
      throw new OutpostError(
        "TASK_INPUT_INVALID",
        `the model has no input ${name}; its inputs: ${[...known].join(", ") || "none"}`,
      );
    }
  }
  for (const spec of specs) {
    const t = feeds[spec.name];
    if (t === undefined) throw new OutpostError("TASK_INPUT_INVALID", `input ${spec.name} is missing`);
    const expected = `${spec.type} ${describeShape(spec.shape)}`;
    const found = `${t.type} ${describeShape(t.dims)}`;
    const fits =
      t.type === spec.type &&
      t.dims.length === spec.shape.length &&
      spec.shape.every((d, i) => typeof d !== "number" || d < 0 || d === t.dims[i]);
    if (!fits) throw new OutpostError("TASK_INPUT_INVALID", `input ${spec.name}: expected ${expected}, found ${found}`);
  }
}
