// Issue 21, item 1: a frame's size is read from its header before anything is decoded, and the decoders stream,
// keeping only the pixels the resize reads. What they give equals the whole-image reference (pngjs, jpeg-js).
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { crc32, deflateSync } from "node:zlib";
import { isOutpostError } from "../../src/core/errors.ts";
import { FRAME_DECODE_BUDGET, imageTensor } from "../../src/tasks/image.ts";
import { ROOT } from "../helpers/agent-process.ts";
import { decodeInChild, frameJpeg, framePng, rawPng, referenceTensor, type Spec } from "../helpers/frames.ts";

const IMAGES = join(ROOT, "test", "fixtures", "images");
const image = (name: string) => readFileSync(join(IMAGES, name));
const rgb: Spec = { width: 23, height: 17, channels: 3, scale: 1 / 255, mean: [0], std: [1] };
const gray: Spec = { width: 64, height: 64, channels: 1, scale: 1 / 255, mean: [0], std: [1] };

async function outcome(bytes: Buffer, spec: Spec): Promise<string> {
  try {
    await imageTensor(bytes, spec);
    return "ok";
  } catch (err) {
    return isOutpostError(err) ? `${err.code}: ${err.message}` : `not an OutpostError: ${String(err)}`;
  }
}

/** The largest difference between two tensors, in 0-255 levels (the specs here scale by 1/255). */
function maxLevels(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs((a[i] ?? 0) - (b[i] ?? 0)) * 255);
  return m;
}

describe("image decoding: what the streaming decoders give", () => {
  for (const name of ["rgb8.png", "rgb16.png", "interlaced.png", "palette.png", "gray2.png", "rgba.png"]) {
    it(`${name}: exactly what pngjs gives, resized (3 channels and gray, down and up)`, async () => {
      for (const spec of [rgb, gray, { ...rgb, width: 300, height: 200 }]) {
        const t = await imageTensor(image(name), spec);
        assert.ok(maxLevels(t.data as Float32Array, referenceTensor(image(name), spec)) < 1e-3, name);
      }
    });
  }

  for (const name of ["ycc420.jpg", "ycc422.jpg", "gray.jpg", "restart.jpg", "progressive.jpg"]) {
    it(`${name}: within 3 levels of jpeg-js's whole-image decode`, async () => {
      for (const spec of [rgb, gray]) {
        const t = await imageTensor(image(name), spec);
        const d = maxLevels(t.data as Float32Array, referenceTensor(image(name), spec));
        assert.ok(d <= 3, `${name} ${spec.channels} channels: ${d.toFixed(2)} levels apart`);
      }
    });
  }

  it("a large progressive JPEG is judged from its DC coefficients (1/8 scale): close to the whole image", async () => {
    const d = maxLevels(
      (await imageTensor(image("progressive-large.jpg"), gray)).data as Float32Array,
      referenceTensor(image("progressive-large.jpg"), gray),
    );
    assert.ok(d <= 6, `${d.toFixed(2)} levels apart`);
  });
});

describe("image bounds: checked from the header, before any decode", () => {
  it("a 62 KB PNG declaring 8000x8000 is refused from IHDR, nothing inflated", async () => {
    const bomb = rawPng(8000, 8000, deflateSync(Buffer.alloc(8000 * 3 + 1), { level: 9 }));
    assert.match(await outcome(bomb, gray), /TASK_INPUT_INVALID: .*8000x8000, more than 24 megapixels/);
  });

  it("a PNG that inflates past what its IHDR implies is refused as it inflates; a short one as truncated", async () => {
    const bomb = rawPng(100, 100, deflateSync(Buffer.alloc(64 * 1024 * 1024)));
    assert.match(await outcome(bomb, gray), /TASK_INPUT_INVALID: .*inflates to more than the 30100 bytes/);
    const short = rawPng(100, 100, deflateSync(Buffer.alloc(3010)));
    assert.match(await outcome(short, gray), /TASK_INPUT_INVALID: .*truncated/);
  });

  it("a JPEG declaring 30000x30000 behind a 60 KB APP segment is refused from its SOF", async () => {
    const small = frameJpeg("good-1.png", 64, 64);
    const app = Buffer.alloc(4 + 60_000);
    app.set([0xff, 0xe1]);
    app.writeUInt16BE(60_002, 2);
    const big = Buffer.concat([small.subarray(0, 2), app, small.subarray(2)]);
    // SOF0's height and width, after the APP segment: 30000x30000.
    const sof = big.indexOf(Buffer.from([0xff, 0xc0]));
    big.writeUInt16BE(30_000, sof + 5);
    big.writeUInt16BE(30_000, sof + 7);
    assert.match(await outcome(big, gray), /TASK_INPUT_INVALID: .*30000x30000, more than 24 megapixels/);
  });

  it("an attacker's variants: a side too long, floods of scans and of IDAT chunks (the attack on issue 21's fix)", async () => {
    const chunkOf = (type: string, data: Buffer) => {
      const b = Buffer.alloc(12 + data.length);
      b.writeUInt32BE(data.length);
      b.write(type, 4, "latin1");
      data.copy(b, 8);
      b.writeUInt32BE(crc32(b.subarray(4, 8 + data.length)), 8 + data.length);
      return b;
    };
    // 24 MP as one row: within the pixel bound, but two 192 MB rows of 16-bit RGBA to unfilter.
    const wide = rawPng(24_000_000, 1, deflateSync(Buffer.alloc(1000)), 6);
    assert.match(await outcome(wide, gray), /24000000x1, a side longer than 32768 pixels/);
    // 300,000 empty IDATs before the real one: read in batches, never one object per chunk kept.
    const good = rawPng(3, 3, deflateSync(Buffer.alloc(30)));
    const flood = Buffer.concat([
      good.subarray(0, 33),
      Buffer.concat(Array(300_000).fill(chunkOf("IDAT", Buffer.alloc(0)))),
      good.subarray(33),
    ]);
    assert.equal(await outcome(flood, gray), "ok");
    const split = Buffer.concat([
      good.subarray(0, 33),
      chunkOf("IDAT", Buffer.alloc(0)),
      chunkOf("tEXt", Buffer.from("a\0b")),
      good.subarray(33),
    ]);
    assert.match(await outcome(split, gray), /IDAT chunks that are not consecutive/);
    // A 6000x4000 JPEG with 300 scans of no data: each would be a pass over 375,000 blocks.
    const seg = (m: number, d: number[]) => Buffer.from([0xff, m, (d.length + 2) >> 8, (d.length + 2) & 255, ...d]);
    const head = (sof: number) => [
      Buffer.from([0xff, 0xd8]),
      seg(0xdb, [0, ...Array(64).fill(1)]),
      seg(0xc4, [0x00, 1, ...Array(15).fill(0), 0]),
      seg(0xc4, [0x10, 1, ...Array(15).fill(0), 0]),
      seg(sof, [8, 0x0f, 0xa0, 0x17, 0x70, 1, 1, 0x11, 0]),
    ];
    const eoi = Buffer.from([0xff, 0xd9]);
    const scans = Buffer.concat([
      ...head(0xc0),
      ...Array(300).fill(Buffer.from([0xff, 0xda, 0, 8, 1, 1, 0, 0, 63, 0, 0])),
      eoi,
    ]);
    assert.match(await outcome(scans, gray), /a scan that ends before its last block/);
    const empty = Buffer.concat([...head(0xc0), ...Array(1000).fill(Buffer.from([0xff, 0xda, 0, 2])), eoi]);
    assert.match(await outcome(empty, gray), /malformed scan header/);
    const many = Buffer.concat([
      ...head(0xc2),
      ...Array(100).fill(Buffer.from([0xff, 0xda, 0, 8, 1, 1, 0, 1, 63, 0, 0])),
      eoi,
    ]);
    assert.match(await outcome(many, gray), /more than 64 scans/);
  });

  it("corrupt, truncated and unknown images are TASK_INPUT_INVALID", async () => {
    const jpg = image("ycc420.jpg");
    const png = image("rgb8.png");
    for (const bytes of [
      png.subarray(0, 100),
      png.subarray(0, 20),
      jpg.subarray(0, jpg.length / 2),
      jpg.subarray(0, 30),
      Buffer.from([0xff, 0xd8, 0xff, 0, 0, 0]),
      Buffer.concat([png.subarray(0, 40), Buffer.from([1, 2, 3]), png.subarray(43)]),
    ])
      assert.match(await outcome(bytes, gray), /^TASK_INPUT_INVALID: /);
  });
});

describe("image memory: a camera's full frame within the stated budget", () => {
  const dir = mkdtempSync(join(tmpdir(), "outpost-frames-"));
  after(() => rmSync(dir, { recursive: true, force: true }));

  for (const [what, file, make, tolerance] of [
    ["a 24 MP PNG (6000x4000)", "frame.png", () => framePng("chip-1.png", 6000, 4000), 1e-3],
    ["a 12.3 MP JPEG (4056x3040, a Pi HQ camera frame)", "frame.jpg", () => frameJpeg("good-1.png", 4056, 3040), 2],
  ] as const) {
    it(`${what}: decoded in a fresh process within ${FRAME_DECODE_BUDGET / 2 ** 20} MiB, equal to the reference`, (t) => {
      const bytes = make();
      writeFileSync(join(dir, file), bytes);
      const r = decodeInChild(join(dir, file), gray);
      assert.equal(r.error, undefined);
      t.diagnostic(`grew ${(r.grewBytes / 2 ** 20).toFixed(1)} MiB`);
      assert.ok(
        r.grewBytes <= FRAME_DECODE_BUDGET,
        `grew ${(r.grewBytes / 2 ** 20).toFixed(1)} MiB while decoding (budget ${FRAME_DECODE_BUDGET / 2 ** 20} MiB)`,
      );
      assert.ok(maxLevels(r.tensor, referenceTensor(bytes, gray)) <= tolerance, what);
    });
  }
});
