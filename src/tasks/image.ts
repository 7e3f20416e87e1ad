import jpeg from "jpeg-js";
import { PNG } from "pngjs";
import { errorMessage, OutpostError } from "../core/errors.ts";
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

/** Frames larger than this are refused before decoding (a 4K camera frame is 8.3 MP). */
const MAX_MEGAPIXELS = 24;

interface Rgba {
  width: number;
  height: number;
  data: Uint8Array;
}

function decode(bytes: Uint8Array): Rgba {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  try {
    if (b.length >= 8 && b.readUInt32BE(0) === 0x89504e47) {
      const png = PNG.sync.read(b);
      if (png.width * png.height > MAX_MEGAPIXELS * 1e6) throw new Error(`${png.width}x${png.height} is too large`);
      return { width: png.width, height: png.height, data: png.data };
    }
    if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) {
      const img = jpeg.decode(b, {
        useTArray: true,
        formatAsRGBA: true,
        maxResolutionInMP: MAX_MEGAPIXELS,
        maxMemoryUsageInMB: 256,
      });
      return { width: img.width, height: img.height, data: img.data };
    }
  } catch (err) {
    throw new OutpostError("TASK_INPUT_INVALID", `the image does not decode: ${errorMessage(err)}`, { cause: err });
  }
  throw new OutpostError("TASK_INPUT_INVALID", "not a PNG or JPEG image (by its first bytes)");
}

/** One channel of the decoded image at (x, y); gray is the ITU-R BT.601 luma of the RGB values. */
function sample(img: Rgba, x: number, y: number, channel: number, gray: boolean): number {
  const i = (y * img.width + x) * 4;
  const d = img.data;
  if (!gray) return d[i + channel] ?? 0;
  return 0.299 * (d[i] ?? 0) + 0.587 * (d[i + 1] ?? 0) + 0.114 * (d[i + 2] ?? 0);
}

/**
 * Decodes a PNG or JPEG and turns it into a float32 tensor [1, channels, height, width]: resized with bilinear
 * interpolation (pixel centres aligned, as PyTorch's `align_corners=False`), then scaled and normalised. An
 * image already of the model's size is taken as is, so a PNG gives exactly the values a Python reference does.
 */
export function imageTensor(bytes: Uint8Array, spec: ImageInput): Tensor {
  const img = decode(bytes);
  const { width: W, height: H, channels: C } = spec;
  const gray = C === 1;
  const out = new Float32Array(C * H * W);
  const sx = img.width / W;
  const sy = img.height / H;
  for (let c = 0; c < C; c++) {
    const mean = spec.mean[c] ?? spec.mean[0] ?? 0;
    const std = spec.std[c] ?? spec.std[0] ?? 1;
    for (let y = 0; y < H; y++) {
      const fy = Math.min(Math.max((y + 0.5) * sy - 0.5, 0), img.height - 1);
      const y0 = Math.floor(fy);
      const y1 = Math.min(y0 + 1, img.height - 1);
      const wy = fy - y0;
      for (let x = 0; x < W; x++) {
        const fx = Math.min(Math.max((x + 0.5) * sx - 0.5, 0), img.width - 1);
        const x0 = Math.floor(fx);
        const x1 = Math.min(x0 + 1, img.width - 1);
        const wx = fx - x0;
        const v =
          (1 - wy) * ((1 - wx) * sample(img, x0, y0, c, gray) + wx * sample(img, x1, y0, c, gray)) +
          wy * ((1 - wx) * sample(img, x0, y1, c, gray) + wx * sample(img, x1, y1, c, gray));
        out[c * H * W + y * W + x] = (v * spec.scale - mean) / std;
      }
    }
  }
  return { type: "float32", dims: [1, C, H, W], data: out };
}
