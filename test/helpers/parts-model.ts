import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "./agent-process.ts";

/** The shipped demo model, its sample images and the outputs Python's onnxruntime gives for them. */
export const DEMO = join(ROOT, "src", "tasks", "demo");
export const MODEL = join(DEMO, "parts.onnx");

interface Fixtures {
  labels: string[];
  samples: { sample: string; label: string; scores: number[] }[];
  tensors: {
    name: string;
    inputs: Record<string, { type: string; dims: number[]; base64: string }>;
    outputs: Record<string, { dims: number[]; data: number[] }>;
  }[];
}
export const FIXTURES = JSON.parse(readFileSync(join(DEMO, "fixtures.json"), "utf8")) as Fixtures;

export function sample(name: string): Buffer {
  return readFileSync(join(DEMO, "samples", name));
}

/** Every value within `tolerance` of the reference (the 1e-4). */
export function assertClose(actual: readonly number[], expected: readonly number[], what: string, tolerance = 1e-4) {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (const [i, e] of expected.entries()) {
    const a = actual[i] ?? Number.NaN;
    assert.ok(Math.abs(a - e) <= tolerance, `${what}[${i}]: ${a} is not within ${tolerance} of ${e}`);
  }
}

/** Tasks on the demo model: the tensor task, the image classifier, and a stricter second opinion. */
export function demoTasks(extra: Record<string, unknown> = {}): Record<string, unknown> {
  const classify = (minScore: number) => ({
    type: "classify-image",
    model: MODEL,
    labels: FIXTURES.labels,
    input: { width: 64, height: 64, channels: 1 },
    pass: { labels: ["good"], minScore },
  });
  return { parts: { type: "onnx", model: MODEL }, inspect: classify(0.5), strict: classify(0.999), ...extra };
}
