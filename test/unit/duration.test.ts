import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { durationMs, formatDuration, parseDuration } from "../../src/config/duration.ts";

describe("durations", () => {
  it("parses every unit", () => {
    assert.equal(parseDuration("500ms"), 500);
    assert.equal(parseDuration("10s"), 10_000);
    assert.equal(parseDuration("1.5m"), 90_000);
    assert.equal(parseDuration("2h"), 7_200_000);
    assert.equal(parseDuration("1d"), 86_400_000);
    assert.equal(parseDuration(" 3s "), 3000);
  });

  it("rejects what is not a duration", () => {
    for (const bad of ["", "10", "s", "10 s", "-1s", "1w", "10sec", "1e3ms", "1s2"]) {
      assert.equal(parseDuration(bad), undefined, bad);
    }
    assert.throws(() => durationMs("soon"), /not a duration/);
  });

  it("formats back to the shortest exact unit", () => {
    assert.equal(formatDuration(500), "500ms");
    assert.equal(formatDuration(1500), "1500ms");
    assert.equal(formatDuration(60_000), "1m");
    assert.equal(formatDuration(86_400_000), "1d");
    for (const ms of [1, 999, 1000, 61_000, 3_600_000]) assert.equal(parseDuration(formatDuration(ms)), ms);
  });
});
