// Camera frames for the image tests: large PNGs and JPEGs made from the demo's 64x64 samples (each pixel a
// block), so the model's verdict on them is the sample's; and the reference decode to compare against (the whole
// image in memory with pngjs or jpeg-js, resized as src/tasks/image.ts documents).
import { spawnSync } from "node:child_process";
import { crc32, deflateSync } from "node:zlib";
import jpeg from "jpeg-js";
import { PNG } from "pngjs";
import { ROOT } from "./agent-process.ts";
import { sample } from "./parts-model.ts";

function chunk(type: string, data: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, "latin1");
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])), 0);
  return Buffer.concat([head, data, crc]);
}

/** A PNG from raw filtered rows (filter byte 0 each) and a declared header: sizes may lie, on purpose. */
export function rawPng(width: number, height: number, idat: Buffer, colorType = 2): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, colorType, 0, 0, 0], 8);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", idat),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

/** The demo sample's gray value at (x, y) of a width x height frame: each sample pixel is a block. */
function upscaled(name: string, width: number, height: number) {
  const src = PNG.sync.read(sample(name));
  return (x: number, y: number) =>
    src.data[(Math.floor((y * src.height) / height) * src.width + Math.floor((x * src.width) / width)) * 4] ?? 0;
}

/** An RGB PNG of width x height showing the demo sample `name` (zlib level 1: a 24 MP frame takes a second). */
export function framePng(name: string, width: number, height: number): Buffer {
  const at = upscaled(name, width, height);
  const rows = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    const base = y * (width * 3 + 1);
    for (let x = 0; x < width; x++) rows.fill(at(x, y), base + 1 + 3 * x, base + 4 + 3 * x);
  }
  return rawPng(width, height, deflateSync(rows, { level: 1 }));
}

/** A baseline JPEG of width x height showing the demo sample `name` (jpeg-js, 4:4:4). */
export function frameJpeg(name: string, width: number, height: number, quality = 90): Buffer {
  const at = upscaled(name, width, height);
  const rgba = Buffer.alloc(width * height * 4, 255);
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++) rgba.fill(at(x, y), (y * width + x) * 4, (y * width + x) * 4 + 3);
  return Buffer.from(jpeg.encode({ width, height, data: rgba }, quality).data);
}

export interface Spec {
  width: number;
  height: number;
  channels: 1 | 3;
  scale: number;
  mean: number[];
  std: number[];
}

/** The reference: the whole image decoded by pngjs or jpeg-js, bilinear (align_corners=False), normalised. */
export function referenceTensor(bytes: Buffer, spec: Spec): Float32Array {
  const img =
    bytes[0] === 0x89
      ? PNG.sync.read(bytes)
      : jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true, maxResolutionInMP: 100, maxMemoryUsageInMB: 4096 });
  const { width: W, height: H, channels: C } = spec;
  const px = (x: number, y: number, c: number) => {
    const i = (y * img.width + x) * 4;
    const d = img.data;
    return C === 1 ? 0.299 * (d[i] ?? 0) + 0.587 * (d[i + 1] ?? 0) + 0.114 * (d[i + 2] ?? 0) : (d[i + c] ?? 0);
  };
  const out = new Float32Array(C * H * W);
  for (let c = 0; c < C; c++)
    for (let y = 0; y < H; y++) {
      const fy = Math.min(Math.max((y + 0.5) * (img.height / H) - 0.5, 0), img.height - 1);
      const y0 = Math.floor(fy);
      const y1 = Math.min(y0 + 1, img.height - 1);
      for (let x = 0; x < W; x++) {
        const fx = Math.min(Math.max((x + 0.5) * (img.width / W) - 0.5, 0), img.width - 1);
        const x0 = Math.floor(fx);
        const x1 = Math.min(x0 + 1, img.width - 1);
        const wy = fy - y0;
        const wx = fx - x0;
        const v =
          (1 - wy) * ((1 - wx) * px(x0, y0, c) + wx * px(x1, y0, c)) +
          wy * ((1 - wx) * px(x0, y1, c) + wx * px(x1, y1, c));
        out[c * H * W + y * W + x] =
          (v * spec.scale - (spec.mean[c] ?? spec.mean[0] ?? 0)) / (spec.std[c] ?? spec.std[0] ?? 1);
      }
    }
  return out;
}

/**
 * Decodes `file` with src/tasks/image.ts in a fresh process and reports how much its resident memory grew:
 * the peak (VmHWM, reset through /proc/self/clear_refs once the file was read, since the process's own start
 * may peak higher than a decode does) minus the resident memory at that moment; and the tensor.
 */
export function decodeInChild(file: string, spec: Spec): { grewBytes: number; tensor: number[]; error?: string } {
  const script = `
    import { readFileSync, writeFileSync } from "node:fs";
    const { imageTensor } = await import(${JSON.stringify(`${ROOT}/src/tasks/image.ts`)});
    const bytes = readFileSync(${JSON.stringify(file)});
    const peak = () => Number(/VmHWM:\\s+(\\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"))[1]) * 1024;
    writeFileSync("/proc/self/clear_refs", "5");
    const before = process.memoryUsage.rss();
    try {
      const t = await imageTensor(bytes, ${JSON.stringify(spec)});
      console.log(JSON.stringify({ grewBytes: peak() - before, tensor: Array.from(t.data) }));
    } catch (err) {
      console.log(JSON.stringify({ grewBytes: peak() - before, tensor: [], error: err.message }));
    }`;
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], {
    encoding: "utf8",
    maxBuffer: 1 << 26,
  });
  if (r.status !== 0) throw new Error(`the decode process ended ${r.status ?? r.signal}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}
