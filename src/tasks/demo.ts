import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import * as sea from "node:sea";
import { inBinary } from "./runtime.ts";

export interface DemoFiles {
  model: Uint8Array;
  samples: { name: string; bytes: Uint8Array }[];
  labels: string[];
}

const LABELS = ["good", "scratch", "chip"];

/**
 * The shipped demo model and its sample images (src/tasks/demo, trained by scripts/train-parts-model.py): from
 * the binary's assets, or from the checkout.
 */
export function demoFiles(): DemoFiles {
  if (inBinary()) {
    const names = sea
      .getAssetKeys()
      .filter((k) => k.startsWith("demo/samples/"))
      .sort();
    return {
      model: new Uint8Array(sea.getRawAsset("demo/parts.onnx")),
      samples: names.map((k) => ({ name: k.slice("demo/samples/".length), bytes: new Uint8Array(sea.getRawAsset(k)) })),
      labels: LABELS,
    };
  }
  const dir = join(import.meta.dirname, "demo");
  return {
    model: readFileSync(join(dir, "parts.onnx")),
    samples: readdirSync(join(dir, "samples"))
      .sort()
      .map((name) => ({ name, bytes: readFileSync(join(dir, "samples", name)) })),
    labels: LABELS,
  };
}

/** The demo's quality check: the model on the camera folder's images. */
export function demoTask(model: string, folder: string): Record<string, unknown> {
  return {
    type: "classify-image",
    model,
    labels: LABELS,
    input: { width: 64, height: 64, channels: 1 },
    pass: { labels: ["good"], minScore: 0.5 },
    watch: { dir: folder, settle: "0s", poll: "200ms" },
  };
}
