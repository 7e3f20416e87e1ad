// Issue 27, item 3: a source with chunks apart (HTTP's chunks/<sha256>.zst) is asked for each chunk it lacks
// once, by hash, and a chunk the file holds in several places is written to each.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { assemble, type ByteSource } from "../../src/ota/assemble.ts";
import { chunk, DEFAULT_CHUNKS } from "../../src/ota/chunks.ts";
import { tempDir } from "../helpers/temp.ts";

describe("assembling from chunks fetched by hash", () => {
  const block = randomBytes(300 * 1024);
  const data = Buffer.concat([block, block, block, randomBytes(700 * 1024), block]);
  const chunks = chunk(data);
  const index = { params: DEFAULT_CHUNKS, chunks: chunks.map((c) => [c.size, c.sha256] as [number, string]) };
  const bySha = new Map(chunks.map((c) => [c.sha256, data.subarray(c.offset, c.offset + c.size)]));
  const sha256 = createHash("sha256").update(data).digest("hex");

  it("asks once per distinct chunk, never for a range, and places repeated chunks everywhere", async () => {
    const dir = tempDir("outpost-assemble-");
    const asked: string[] = [];
    const source: ByteSource = {
      read: async () => {
        throw new Error("no range should be asked for");
      },
      chunk: async (sha) => {
        asked.push(sha);
        return bySha.get(sha);
      },
    };
    const p = await assemble({
      sha256,
      size: data.length,
      index,
      source,
      partial: join(dir, "p"),
      ready: join(dir, "r"),
    });
    assert.deepEqual(readFileSync(join(dir, "r")), data);
    assert.equal(asked.length, new Set(asked).size);
    assert.equal(asked.length, bySha.size);
    assert.ok(bySha.size < chunks.length, "the test's file repeats chunks");
    assert.equal(p.fetched, data.length);
  });

  it("a chunk missing or wrong after the first (chunks/ partly uploaded, a damaged file) comes as a range", async () => {
    const dir = tempDir("outpost-assemble-");
    const distinct = [...bySha.keys()];
    const missing = distinct[2];
    const wrong = distinct[3];
    const ranges: [number, number][] = [];
    const source: ByteSource = {
      read: async (offset, size) => {
        ranges.push([offset, size]);
        return data.subarray(offset, offset + size);
      },
      chunk: async (sha) => (sha === missing ? undefined : sha === wrong ? Buffer.from("not it") : bySha.get(sha)),
    };
    await assemble({ sha256, size: data.length, index, source, partial: join(dir, "p"), ready: join(dir, "r") });
    assert.deepEqual(readFileSync(join(dir, "r")), data);
    const asRanges = chunks.filter((c) => c.sha256 === missing || c.sha256 === wrong);
    assert.equal(
      ranges.reduce((n, [, size]) => n + size, 0),
      asRanges.reduce((n, c) => n + c.size, 0),
    );
  });

  it("a source without chunks apart says so once, and ranges fetch the rest", async () => {
    const dir = tempDir("outpost-assemble-");
    let asked = 0;
    const source: ByteSource = {
      read: async (offset, size) => data.subarray(offset, offset + size),
      chunk: async () => {
        asked += 1;
        return undefined;
      },
    };
    await assemble({ sha256, size: data.length, index, source, partial: join(dir, "p"), ready: join(dir, "r") });
    assert.deepEqual(readFileSync(join(dir, "r")), data);
    assert.equal(asked, 1);
  });
});
