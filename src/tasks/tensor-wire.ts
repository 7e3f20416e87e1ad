import { z } from "zod";
import { OutpostError } from "../core/errors.ts";
import { ARRAYS, TENSOR_TYPES, type Tensor, type TensorData, type TensorType } from "./tensors.ts";

// Tensors as requests carry them and replies return them (the main thread's side; workers never parse JSON).

/** The most elements one tensor of a request may have (16 Mi: 64 MiB of float32). */
const MAX_ELEMENTS = 16 * 1024 * 1024;

/**
 * A tensor in a request: its values either as a JSON array or as base64 of the little-endian bytes (a quarter of
 * the size for float32, and exact).
 */
export const wireTensor = z
  .strictObject({
    type: z.enum(TENSOR_TYPES as [TensorType, ...TensorType[]]),
    dims: z.array(z.number().int().min(0)).max(8),
    data: z.array(z.union([z.number(), z.string().regex(/^-?\d+$/)])).optional(),
    base64: z.string().optional(),
  })
  .refine((t) => (t.data === undefined) !== (t.base64 === undefined), { message: "give either data or base64" });
export type WireTensor = z.output<typeof wireTensor>;

export const wireFeeds = z.record(z.string().min(1), wireTensor);

function elements(dims: readonly number[]): number {
  return dims.reduce((n, d) => n * d, 1);
}

/** Decodes a request's tensor; the element count must match the dims. */
export function fromWire(name: string, t: WireTensor): Tensor {
  const count = elements(t.dims);
  if (count > MAX_ELEMENTS) {
    throw new OutpostError("TASK_INPUT_INVALID", `input ${name}: ${count} elements, at most ${MAX_ELEMENTS}`);
  }
  const Array_ = ARRAYS[t.type];
  let data: TensorData;
  if (t.base64 !== undefined) {
    const bytes = Buffer.from(t.base64, "base64");
    if (bytes.length !== count * Array_.BYTES_PER_ELEMENT) {
      throw new OutpostError(
        "TASK_INPUT_INVALID",
        `input ${name}: dims [${t.dims.join(",")}] need ${count * Array_.BYTES_PER_ELEMENT} bytes of ${t.type}, base64 has ${bytes.length}`,
      );
    }
    // A copy into an aligned buffer of its own: Buffer's pool slices may start at any offset. Little-endian,
    // like every machine the agent runs on.
    const aligned = new Uint8Array(bytes.length);
    aligned.set(bytes);
    data = new Array_(aligned.buffer);
  } else {
    const values = t.data ?? [];
    if (values.length !== count) {
      throw new OutpostError(
        "TASK_INPUT_INVALID",
        `input ${name}: dims [${t.dims.join(",")}] need ${count} values, data has ${values.length}`,
      );
    }
    data =
      Array_ === BigInt64Array
        ? BigInt64Array.from(values, (v) => BigInt(v))
        : (Array_ as Float64ArrayConstructor).from(values, (v) => Number(v));
  }
  return { type: t.type, dims: [...t.dims], data };
}

/** A tensor for a JSON reply: numbers (int64 as strings, which JSON numbers cannot hold exactly). */
export function toWire(t: Tensor): { type: string; dims: number[]; data: (number | string)[] } {
  const data =
    t.data instanceof BigInt64Array ? Array.from(t.data, (v) => v.toString()) : Array.from(t.data as Float32Array);
  return { type: t.type, dims: t.dims, data };
}
