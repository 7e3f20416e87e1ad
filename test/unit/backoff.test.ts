import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Backoff } from "../../src/core/backoff.ts";

describe("backoff with full jitter", () => {
  it("doubles the ceiling each attempt up to the cap", () => {
    const b = new Backoff({ baseMs: 100, capMs: 1000, random: () => 0.999999 });
    const delays = Array.from({ length: 7 }, () => b.next());
    assert.deepEqual(delays, [99, 199, 399, 799, 999, 999, 999]);
  });

  it("spreads delays over [0, ceiling) with the random source", () => {
    const b = new Backoff({ baseMs: 100, capMs: 10_000, random: () => 0 });
    assert.equal(b.next(), 0);
    const half = new Backoff({ baseMs: 100, capMs: 10_000, random: () => 0.5 });
    half.next();
    half.next();
    assert.equal(half.next(), 200);
  });

  it("starts over after reset and never overflows on a long outage", () => {
    const b = new Backoff({ baseMs: 1000, capMs: 60_000, random: () => 0.5 });
    for (let i = 0; i < 10_000; i++) assert.ok(Number.isFinite(b.next()));
    assert.equal(b.ceiling(), 60_000);
    b.reset();
    assert.equal(b.attempts, 0);
    assert.equal(b.ceiling(), 1000);
  });

  it("refuses nonsense bounds", () => {
    assert.throws(() => new Backoff({ baseMs: 0, capMs: 10 }), RangeError);
    assert.throws(() => new Backoff({ baseMs: 100, capMs: 10 }), RangeError);
  });
});
