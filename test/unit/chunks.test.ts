// Issue 13 groundwork: content-defined chunking, the basis of delta updates.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { type ChunkParams, chunk, plan } from "../../src/ota/chunks.ts";

const P: ChunkParams = { min: 2048, avg: 8192, max: 32768 };

/** Seeded bytes: the same every run (a failing case can be replayed). */
function bytes(n: number, seed: string): Buffer {
  const out = Buffer.alloc(n);
  for (let i = 0, block = 0; i < n; i += 32, block++) {
    createHash("sha256").update(`${seed}-${block}`).digest().copy(out, i);
  }
  return out;
}

describe("content-defined chunks", () => {
  it("cover the input exactly, in order, within min and max, and are the same every time", () => {
    const data = bytes(1_000_000, "a");
    const chunks = chunk(data, P);
    assert.deepEqual(chunk(data, P), chunks);
    let offset = 0;
    for (const [i, c] of chunks.entries()) {
      assert.equal(c.offset, offset);
      assert.ok(c.size <= P.max, `chunk ${i}: ${c.size}`);
      if (i < chunks.length - 1) assert.ok(c.size >= P.min, `chunk ${i}: ${c.size}`);
      assert.equal(
        c.sha256,
        createHash("sha256")
          .update(data.subarray(c.offset, c.offset + c.size))
          .digest("hex"),
      );
      offset += c.size;
    }
    assert.equal(offset, data.length);
    const mean = data.length / chunks.length;
    assert.ok(mean > P.avg * 0.6 && mean < P.avg * 1.6, `mean chunk ${mean.toFixed(0)} for avg ${P.avg}`);
  });

  it("bytes inserted in the middle change only the chunks around them: the rest is reused", () => {
    const base = bytes(2_000_000, "b");
    for (const insert of [1, 100, 50_000]) {
      const changed = Buffer.concat([base.subarray(0, 1_000_000), randomBytes(insert), base.subarray(1_000_000)]);
      const p = plan(chunk(changed, P), chunk(base, P));
      // The insertion itself plus at most a couple of chunks either side of it.
      assert.ok(p.fetchBytes <= insert + 4 * P.max, `insert ${insert}: fetch ${p.fetchBytes}`);
      assert.equal(p.fetchBytes + p.reusedBytes, changed.length);
    }
  });

  it("a plan fetches each missing chunk once, however often it repeats", () => {
    const block = bytes(40_000, "c");
    const data = Buffer.concat([block, block, block, block]);
    const p = plan(chunk(data, P), []);
    assert.equal(new Set(p.fetch.map((c) => c.sha256)).size, p.fetch.length);
    assert.ok(p.fetchBytes < data.length, "repeated content is fetched once");
  });

  it("refuses parameters that would not chunk", () => {
    assert.throws(() => chunk(Buffer.alloc(10), { min: 4096, avg: 3000, max: 8192 }), /power of two/);
    assert.throws(() => chunk(Buffer.alloc(10), { min: 8192, avg: 8192, max: 65536 }), RangeError);
  });
});
