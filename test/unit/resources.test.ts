import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { GrowthDetector, type ResourceSample } from "../../src/resources/growth.ts";

const MiB = 1024 * 1024;
const at = (rss: number, heapUsed = 20 * MiB, handles = 10): ResourceSample => ({ rss, heapUsed, handles, workers: 0 });

/** Feeds samples; returns the verdicts of completed windows. */
function feed(d: GrowthDetector, samples: ResourceSample[]) {
  return samples.flatMap((s) => {
    const v = d.add(s);
    return v ? [v] : [];
  });
}

describe("resource growth", () => {
  const options = { windowSamples: 5, windows: 3, minGrowth: { rss: 8 * MiB, heapUsed: 4 * MiB, handles: 50 } };

  it("flags a floor that rises window after window by more than the threshold", () => {
    const d = new GrowthDetector(options);
    // 4 windows of 5 samples, rss floor 100, 104, 108, 112 MiB, with sawtooth noise inside each window.
    const samples = [0, 1, 2, 3].flatMap((w) => [0, 1, 2, 3, 4].map((i) => at((100 + 4 * w + (i % 2) * 6) * MiB)));
    const verdicts = feed(d, samples);
    assert.equal(verdicts.length, 4);
    assert.deepEqual(
      verdicts.slice(0, 3).map((v) => v.growing),
      [[], [], []],
    );
    assert.deepEqual(verdicts[3]?.growing, ["rss"]);
    assert.deepEqual(verdicts[3]?.floors.rss, { from: 100 * MiB, to: 112 * MiB });
  });

  it("ignores a sawtooth heap, a spike, and growth below the threshold", () => {
    const d = new GrowthDetector(options);
    const samples = Array.from({ length: 40 }, (_, i) =>
      at((100 + (i === 17 ? 200 : 0) + i * 0.05) * MiB, (20 + (i % 5) * 3) * MiB, 10 + (i % 3)),
    );
    for (const v of feed(d, samples)) assert.deepEqual(v.growing, []);
  });

  it("stops flagging when a window's floor no longer rises", () => {
    const d = new GrowthDetector(options);
    const floors = [100, 104, 108, 112, 112];
    const verdicts = feed(
      d,
      floors.flatMap((f) => Array.from({ length: 5 }, () => at(f * MiB))),
    );
    assert.deepEqual(
      verdicts.map((v) => v.growing),
      [[], [], [], ["rss"], []],
    );
  });

  it("counts handles that pile up", () => {
    const d = new GrowthDetector(options);
    const samples = Array.from({ length: 20 }, (_, i) => at(100 * MiB, 20 * MiB, 10 + i * 5));
    assert.deepEqual(feed(d, samples).at(-1)?.growing, ["handles"]);
  });
});
