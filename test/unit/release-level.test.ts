// Issue 27: `outpost release` compresses the chunks devices fetch over HTTP at RELEASE_ZSTD_LEVEL unless told
// otherwise. At level 6 a full x64 binary's chunks were 55.1 MiB on the wire for a first install, against a
// goal of 52; at 17 they are 51.6 (docs/ota.md, "Transports").
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { it } from "node:test";
import { constants, zstdCompressSync } from "node:zlib";
import { chunk } from "../../src/ota/chunks.ts";
import { CHUNKS_DIR, RELEASE_ZSTD_LEVEL } from "../../src/ota/release.ts";
import { runCli as run } from "../helpers/cli.ts";
import { tempDir } from "../helpers/temp.ts";

const dir = tempDir("outpost-release-level-");

/** Whether every chunk file of the release in `out` is `file`'s chunk compressed at `level`. */
function chunksAt(file: string, out: string, level: number): boolean {
  const bytes = readFileSync(file);
  return chunk(bytes).every((c) => {
    const packed = zstdCompressSync(bytes.subarray(c.offset, c.offset + c.size), {
      params: { [constants.ZSTD_c_compressionLevel]: level },
    });
    return readFileSync(join(out, CHUNKS_DIR, `${c.sha256}.zst`)).equals(packed);
  });
}

it("outpost release writes chunks/ at RELEASE_ZSTD_LEVEL by default, and at --zstd-level when given", async () => {
  assert.equal(RELEASE_ZSTD_LEVEL, 17);
  const key = join(dir, "release");
  assert.equal((await run(["keygen", "--out", key, "--release"])).code, 0);
  // Text-like and varied, so that levels 6 and 17 give different bytes; several chunks.
  const model = join(dir, "model.onnx");
  const words = Array.from({ length: 120_000 }, (_, i) => `w${(i * 7919) % 5003} `).join("");
  writeFileSync(model, words);
  const release = async (out: string, ...extra: string[]) => {
    const args = ["release", "--model", model, "--version", "1.0.0", "--key", `${key}.key`, "--out", out];
    const r = await run([...args, ...extra]);
    assert.equal(r.code, 0, r.err);
  };
  await release(join(dir, "default"));
  await release(join(dir, "six"), "--zstd-level", "6");
  assert.ok(chunk(readFileSync(model)).length > 1);
  assert.ok(chunksAt(model, join(dir, "default"), RELEASE_ZSTD_LEVEL));
  assert.ok(!chunksAt(model, join(dir, "default"), 6), "the default is not level 6");
  assert.ok(chunksAt(model, join(dir, "six"), 6));
});
