// Issue 11: what a task's input goes through before a model sees it: wire tensors, the model's input check,
// image decoding and resizing, and threshold rules over telemetry.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import jpeg from "jpeg-js";
import { PNG } from "pngjs";
import { isOutpostError } from "../../src/core/errors.ts";
import { imageTensor } from "../../src/tasks/image.ts";
import { fromWire, toWire } from "../../src/tasks/tensor-wire.ts";
import { checkFeeds, type InputSpec } from "../../src/tasks/tensors.ts";
import { ThresholdRule } from "../../src/tasks/threshold.ts";
import { sample } from "../helpers/parts-model.ts";

const code = (fn: () => unknown): string => {
  try {
    fn();
    return "ok";
  } catch (err) {
    return isOutpostError(err) ? `${err.code}: ${err.message}` : `not an OutpostError: ${String(err)}`;
  }
};

describe("wire tensors", () => {
  it("base64 and arrays give the same exact values; int64 travels as strings", () => {
    const values = [0.1, -2.5, 3e-8, 1];
    const bytes = Buffer.from(new Float32Array(values).buffer).toString("base64");
    const a = fromWire("x", { type: "float32", dims: [2, 2], base64: bytes });
    const b = fromWire("x", { type: "float32", dims: [2, 2], data: values });
    assert.deepEqual(Array.from(a.data as Float32Array), Array.from(b.data as Float32Array));
    const big = fromWire("n", { type: "int64", dims: [2], data: ["9007199254740993", -1] });
    assert.deepEqual(toWire(big).data, ["9007199254740993", "-1"]);
  });

  it("refuses a count that does not match the dims, and a tensor too large, before allocating it", () => {
    assert.match(
      code(() => fromWire("x", { type: "float32", dims: [3], data: [1, 2] })),
      /TASK_INPUT_INVALID: input x: dims \[3\] need 3 values, data has 2/,
    );
    assert.match(
      code(() => fromWire("x", { type: "float32", dims: [2], base64: "AAAA" })),
      /need 8 bytes of float32, base64 has 3/,
    );
    assert.match(
      code(() => fromWire("x", { type: "uint8", dims: [1 << 20, 1 << 20], base64: "" })),
      /at most 16777216/,
    );
  });

  it("checks every input's type and shape against the model's; free axes take any length", () => {
    const specs: InputSpec[] = [{ name: "image", type: "float32", shape: ["batch", 1, 4, 4] }];
    const t = (type: "float32" | "int32", dims: number[]) =>
      fromWire("image", { type, dims, data: Array(dims.reduce((a, b) => a * b, 1)).fill(0) });
    assert.equal(
      code(() => checkFeeds(specs, { image: t("float32", [5, 1, 4, 4]) })),
      "ok",
    );
    assert.match(
      code(() => checkFeeds(specs, { image: t("float32", [1, 4, 4]) })),
      /expected float32 \[batch,1,4,4\], found float32 \[1,4,4\]/,
    );
    assert.match(
      code(() => checkFeeds(specs, { image: t("int32", [1, 1, 4, 4]) })),
      /found int32/,
    );
    assert.match(
      code(() => checkFeeds(specs, {})),
      /input image is missing/,
    );
    assert.match(
      code(() => checkFeeds(specs, { image: t("float32", [1, 1, 4, 4]), other: t("float32", [1]) })),
      /no input other/,
    );
  });
});

const codeOf = async (fn: () => Promise<unknown>): Promise<string> => {
  try {
    await fn();
    return "ok";
  } catch (err) {
    return isOutpostError(err) ? `${err.code}: ${err.message}` : `not an OutpostError: ${String(err)}`;
  }
};

describe("images", () => {
  const spec = { width: 64, height: 64, channels: 1 as const, scale: 1 / 255, mean: [0], std: [1] };

  it("a PNG of the model's size gives each pixel / 255, as the Python reference computes it", async () => {
    const png = sample("good-1.png");
    const decoded = PNG.sync.read(png);
    const t = await imageTensor(png, spec);
    assert.deepEqual(t.dims, [1, 1, 64, 64]);
    const data = t.data as Float32Array;
    for (let i = 0; i < 64 * 64; i++) {
      const expected = (decoded.data[i * 4] ?? 0) / 255;
      assert.ok(Math.abs((data[i] ?? 0) - expected) < 1e-6, `pixel ${i}`);
    }
  });

  it("resizes a JPEG (bilinear), converts RGB to gray, and normalises per channel", async () => {
    const w = 128;
    const rgba = Buffer.alloc(w * w * 4);
    for (let i = 0; i < w * w; i++) rgba.set([200, 100, 50, 255], i * 4);
    const encoded = jpeg.encode({ width: w, height: w, data: rgba }, 100).data;
    const gray = await imageTensor(encoded, { ...spec, width: 32, height: 16 });
    assert.deepEqual(gray.dims, [1, 1, 16, 32]);
    const luma = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255;
    for (const v of gray.data as Float32Array) assert.ok(Math.abs(v - luma) < 0.02, `${v} vs ${luma}`);
    const rgb = await imageTensor(encoded, {
      ...spec,
      channels: 3,
      width: 8,
      height: 8,
      mean: [0.5, 0.5, 0.5],
      std: [0.25, 0.25, 0.25],
    });
    const d = rgb.data as Float32Array;
    assert.ok(Math.abs((d[0] ?? 0) - (200 / 255 - 0.5) / 0.25) < 0.1);
    assert.ok(Math.abs((d[64] ?? 0) - (100 / 255 - 0.5) / 0.25) < 0.1);
    assert.ok(Math.abs((d[128] ?? 0) - (50 / 255 - 0.5) / 0.25) < 0.1);
  });

  it("a corrupt, truncated or unknown image is TASK_INPUT_INVALID, never a crash", async () => {
    const png = sample("chip-1.png");
    assert.match(
      await codeOf(() => imageTensor(png.subarray(0, 100), spec)),
      /TASK_INPUT_INVALID: the image does not decode/,
    );
    assert.match(await codeOf(() => imageTensor(Buffer.from([0xff, 0xd8, 0xff, 0, 0, 0]), spec)), /does not decode/);
    assert.match(await codeOf(() => imageTensor(Buffer.from("BM not a bitmap we take"), spec)), /not a PNG or JPEG/);
    assert.match(await codeOf(() => imageTensor(Buffer.alloc(0), spec)), /not a PNG or JPEG/);
  });
});

describe("threshold rules", () => {
  it("raises only after the condition held for the whole period, clears with hysteresis, never flaps", () => {
    const rule = new ThresholdRule({ metric: "temperature.cpu", above: 80, forMs: 30_000, hysteresis: 2 });
    assert.equal(rule.observe(85, 0), undefined);
    assert.equal(rule.observe(85, 20_000), undefined);
    assert.equal(rule.observe(79, 25_000), undefined, "a dip restarts the period");
    assert.equal(rule.observe(81, 26_000), undefined);
    assert.equal(rule.observe(90, 55_000), undefined);
    assert.deepEqual(rule.observe(82, 56_000), {
      active: true,
      metric: "temperature.cpu",
      value: 82,
      limit: "above 80",
      heldMs: 30_000,
    });
    assert.equal(rule.observe(79, 57_000), undefined, "inside the hysteresis: still raised");
    assert.equal(rule.observe(undefined, 58_000), undefined, "a missing value changes nothing");
    assert.deepEqual(rule.observe(77.5, 59_000), {
      active: false,
      metric: "temperature.cpu",
      value: 77.5,
      limit: "above 80",
    });
    assert.equal(rule.observe(77, 60_000), undefined);
    for (let round = 0; round < 3; round++) {
      const t = 100_000 * (round + 1);
      assert.equal(rule.observe(81, t), undefined);
      assert.equal(rule.observe(81, t + 30_000)?.active, true);
      assert.equal(rule.observe(70, t + 31_000)?.active, false);
    }
  });

  it("below, and a period of zero raising at once", () => {
    const rule = new ThresholdRule({ metric: "pi.armClockMHz", below: 600, forMs: 0, hysteresis: 0 });
    assert.equal(rule.observe(700, 0), undefined);
    assert.equal(rule.observe(599, 1)?.active, true);
    assert.equal(rule.observe(600, 2)?.active, false);
  });
});
