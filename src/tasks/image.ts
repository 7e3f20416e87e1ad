import jpeg from "jpeg-js";
import { errorMessage, OutpostError } from "../core/errors.ts";
import { decodeJpeg, isJpeg, jpegHeader } from "./image-jpeg.ts";
import { decodePng, isPng, pngHeader, type RowSink } from "./image-png.ts";
import type { Tensor } from "./tensors.ts";

/** How an image becomes the model's input tensor (a `classify-image` task's `input` section). */
export interface ImageInput {
  width: number;
  height: number;
  channels: 1 | 3;
  /** Each 0-255 value is multiplied by scale, then (v - mean) / std, per channel when a list is given. */
  scale: number;
  mean: readonly number[];
  std: readonly number[];
}

/** Frames larger than this are refused from their header, before any decoding (a 4K camera frame is 8.3 MP). */
export const MAX_MEGAPIXELS = 24;
/**
 * Nor may either side be longer than this: what a decoder allocates per row or column (a PNG row of 16-bit RGBA
 * is 8 bytes a pixel, twice) stays small. A 24 MP panorama of 12000x2000 passes.
 */
export const MAX_SIDE = 32768;
/**
 * What one frame's decode may hold, beside the frame's own bytes: 3 workers of a 4-core board decoding at once
 * stay within a third of the unit's `MemoryMax=384M`. The streaming decoders need far less (rows, tables and the
 * sampled pixels); only the whole-image fallback (a progressive or CMYK JPEG) is sized against it.
 */
export const FRAME_DECODE_BUDGET = 40 * 1024 * 1024;
/** What jpeg-js holds per pixel while decoding a whole image (measured: 470 MB at 12.3 MP), with a margin. */
const JPEG_JS_BYTES_PER_PIXEL = 48;

/** Source taps of a bilinear resize (pixel centres aligned, PyTorch's `align_corners=False`) along one axis. */
function taps(src: number, dst: number) {
  const s = src / dst;
  const i0 = new Int32Array(dst);
  const i1 = new Int32Array(dst);
  const w = new Float64Array(dst);
  for (let o = 0; o < dst; o++) {
    const f = Math.min(Math.max((o + 0.5) * s - 0.5, 0), src - 1);
    const a = Math.floor(f);
    i0[o] = a;
    i1[o] = Math.min(a + 1, src - 1);
    w[o] = f - a;
  }
  return { i0, i1, w };
}

/**
 * The only pixels a resize reads: at most two rows and two columns per output row and column. Decoders hand it
 * rows (or, for a JPEG, colours at the listed places) and it keeps those pixels' RGB, so a 24 MP frame costs
 * what its model's input does.
 */
class Samples implements RowSink {
  readonly rows: number[];
  readonly cols: number[];
  private readonly rowAt: Int32Array;
  private readonly colAt: Int32Array;
  readonly rgb: Uint8Array;
  private readonly px = new Uint8Array(3);

  constructor(width: number, height: number, tx: ReturnType<typeof taps>, ty: ReturnType<typeof taps>) {
    this.rows = [...new Set([...ty.i0, ...ty.i1])].sort((a, b) => a - b);
    this.cols = [...new Set([...tx.i0, ...tx.i1])].sort((a, b) => a - b);
    this.rowAt = new Int32Array(height).fill(-1);
    this.colAt = new Int32Array(width).fill(-1);
    for (const [i, y] of this.rows.entries()) this.rowAt[y] = i;
    for (const [i, x] of this.cols.entries()) this.colAt[x] = i;
    this.rgb = new Uint8Array(this.rows.length * this.cols.length * 3);
  }

  wants(y: number): boolean {
    return (this.rowAt[y] ?? -1) >= 0;
  }

  row(y: number, x0: number, dx: number, count: number, rgb: (i: number, out: Uint8Array) => void): void {
    const ri = this.rowAt[y] ?? -1;
    for (const [ci, x] of this.cols.entries()) {
      const i = (x - x0) / dx;
      if (i < 0 || i >= count || !Number.isInteger(i)) continue;
      rgb(i, this.px);
      this.put(ri, ci, this.px[0] ?? 0, this.px[1] ?? 0, this.px[2] ?? 0);
    }
  }

  put(ri: number, ci: number, r: number, g: number, b: number): void {
    const at = (ri * this.cols.length + ci) * 3;
    this.rgb[at] = r;
    this.rgb[at + 1] = g;
    this.rgb[at + 2] = b;
  }

  /** One channel at image (x, y), which must be a listed place; gray is the ITU-R BT.601 luma of the RGB. */
  sample(x: number, y: number, channel: number, gray: boolean): number {
    const i = ((this.rowAt[y] ?? 0) * this.cols.length + (this.colAt[x] ?? 0)) * 3;
    const d = this.rgb;
    if (!gray) return d[i + channel] ?? 0;
    return 0.299 * (d[i] ?? 0) + 0.587 * (d[i + 1] ?? 0) + 0.114 * (d[i + 2] ?? 0);
  }
}

/** The frame's size from its header alone (PNG IHDR, JPEG SOF), refused above the bound before any decode. */
function header(b: Buffer) {
  const h = isPng(b)
    ? { ...pngHeader(b), kind: "png" as const }
    : isJpeg(b)
      ? { ...jpegHeader(b), kind: "jpeg" as const }
      : undefined;
  if (!h) throw new OutpostError("TASK_INPUT_INVALID", "not a PNG or JPEG image (by its first bytes)");
  if (h.width > MAX_SIDE || h.height > MAX_SIDE)
    throw new OutpostError(
      "TASK_INPUT_INVALID",
      `the image is ${h.width}x${h.height}, a side longer than ${MAX_SIDE} pixels (refused from its header)`,
    );
  if (h.width * h.height > MAX_MEGAPIXELS * 1e6)
    throw new OutpostError(
      "TASK_INPUT_INVALID",
      `the image is ${h.width}x${h.height}, more than ${MAX_MEGAPIXELS} megapixels (refused from its header)`,
    );
  return h;
}

/** A progressive or CMYK JPEG small enough to decode whole: jpeg-js, within the budget. */
function decodeWholeJpeg(b: Buffer, s: Samples): void {
  let img: { width: number; height: number; data: Uint8Array };
  try {
    img = jpeg.decode(b, {
      useTArray: true,
      formatAsRGBA: true,
      maxResolutionInMP: MAX_MEGAPIXELS,
      maxMemoryUsageInMB: Math.floor(FRAME_DECODE_BUDGET / 2 ** 20),
    });
  } catch (err) {
    throw new OutpostError("TASK_INPUT_INVALID", `the image does not decode: ${errorMessage(err)}`, { cause: err });
  }
  for (const [ri, y] of s.rows.entries())
    for (const [ci, x] of s.cols.entries()) {
      const i = (y * img.width + x) * 4;
      s.put(ri, ci, img.data[i] ?? 0, img.data[i + 1] ?? 0, img.data[i + 2] ?? 0);
    }
}

/**
 * Decodes a PNG or JPEG and turns it into a float32 tensor [1, channels, height, width]: resized with bilinear
 * interpolation (pixel centres aligned, as PyTorch's `align_corners=False`), then scaled and normalised. An
 * image already of the model's size is taken as is, so a PNG gives exactly the values a Python reference does.
 * The size is read from the header first; the decoders stream, keeping only the pixels the resize reads.
 */
export async function imageTensor(bytes: Uint8Array, spec: ImageInput): Promise<Tensor> {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const h = header(b);
  const { width: W, height: H, channels: C } = spec;
  const tx = taps(h.width, W);
  const ty = taps(h.height, H);
  const img = new Samples(h.width, h.height, tx, ty);
  if (h.kind === "png") await decodePng(b, h, img);
  else if ((h.progressive || h.components === 4) && h.width * h.height * JPEG_JS_BYTES_PER_PIXEL <= FRAME_DECODE_BUDGET)
    decodeWholeJpeg(b, img);
  else decodeJpeg(b, img);
  const gray = C === 1;
  const out = new Float32Array(C * H * W);
  for (let c = 0; c < C; c++) {
    const mean = spec.mean[c] ?? spec.mean[0] ?? 0;
    const std = spec.std[c] ?? spec.std[0] ?? 1;
    for (let y = 0; y < H; y++) {
      const y0 = ty.i0[y] ?? 0;
      const y1 = ty.i1[y] ?? 0;
      const wy = ty.w[y] ?? 0;
      for (let x = 0; x < W; x++) {
        const x0 = tx.i0[x] ?? 0;
        const x1 = tx.i1[x] ?? 0;
        const wx = tx.w[x] ?? 0;
        const v =
          (1 - wy) * ((1 - wx) * img.sample(x0, y0, c, gray) + wx * img.sample(x1, y0, c, gray)) +
          wy * ((1 - wx) * img.sample(x0, y1, c, gray) + wx * img.sample(x1, y1, c, gray));
        out[c * H * W + y * W + x] = (v * spec.scale - mean) / std;
      }
    }
  }
  return { type: "float32", dims: [1, C, H, W], data: out };
}
