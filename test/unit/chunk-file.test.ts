// Issue 27, item 3: the running binary is chunked through a window, never read whole; the chunks must be the
// very ones `chunk` finds in the whole file, or a device would fetch what it already has.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { type ChunkParams, chunk, chunkFile } from "../../src/ota/chunks.ts";

const P: ChunkParams = { min: 64, avg: 256, max: 1024 };

/** A file in memory read at positions, at most `most` bytes a read (short reads, as a pipe or NFS may give). */
const reader = (data: Uint8Array, most = Number.POSITIVE_INFINITY) => ({
  async read(buffer: Uint8Array, offset: number, length: number, position: number) {
    const n = Math.max(0, Math.min(length, most, data.length - position));
    buffer.set(data.subarray(position, position + n), offset);
    return { bytesRead: n };
  },
});

describe("chunkFile", () => {
  it("finds the same chunks as chunk() of the whole file, whatever the size, window and read sizes", async () => {
    for (const size of [0, 1, 63, 64, 65, 1023, 1024, 1025, 2048, 2049, 4096 * 3 + 17, 100_000]) {
      const data = randomBytes(size);
      const want = chunk(data, P);
      for (const window of [2048, 3000, 1 << 20]) {
        for (const most of [Number.POSITIVE_INFINITY, 700]) {
          assert.deepEqual(await chunkFile(reader(data, most), size, P, window), want, `${size} ${window} ${most}`);
        }
      }
    }
    // And with the shipped sizes, across several windows of the default.
    const big = randomBytes(9 * 1024 * 1024 + 5);
    assert.deepEqual(await chunkFile(reader(big), big.length), chunk(big));
  });

  it("a file shorter than its size ends the chunks where it ends, with no empty chunk and no endless loop", async () => {
    const data = randomBytes(5000);
    const got = await chunkFile(reader(data), 9000, P, 2048);
    assert.equal(
      got.reduce((n, c) => n + c.size, 0),
      5000,
    );
    assert.ok(got.every((c) => c.size > 0));
  });
});
