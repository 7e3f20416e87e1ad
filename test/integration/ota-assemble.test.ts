// Issue 13 groundwork: a release's file built from what the device has and what it fetches over HTTP Range,
// resumed after a cut, refused when a chunk or the artifact is wrong.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, beforeEach, describe, it } from "node:test";
import { generateKeys, parsePrivateKey } from "../../src/commands/keys.ts";
import { assemble } from "../../src/ota/assemble.ts";
import { httpSource } from "../../src/ota/http-source.ts";
import { type ChunkIndex, type Manifest, verifyManifest } from "../../src/ota/manifest.ts";
import { makeRelease } from "../../src/ota/release.ts";
import { settled } from "../helpers/outcome.ts";
import { RangeServer } from "../helpers/range-server.ts";

function bytes(n: number, seed: string): Buffer {
  const out = Buffer.alloc(n);
  for (let i = 0, block = 0; i < n; i += 32, block++)
    createHash("sha256").update(`${seed}-${block}`).digest().copy(out, i);
  return out;
}

describe("assembling a release over HTTP", () => {
  const keys = generateKeys();
  let dir: string;
  let server: RangeServer;
  let manifest: Manifest;
  let current: string;
  let next: Buffer;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "outpost-assemble-"));
    // What the device runs, and the next version: the same but for 100 KB changed in the middle.
    const base = bytes(3_000_000, "base");
    current = join(dir, "current.bin");
    writeFileSync(current, base);
    next = Buffer.concat([base.subarray(0, 1_500_000), bytes(100_000, "new"), base.subarray(1_500_000)]);
    writeFileSync(join(dir, "next.bin"), next);
    const release = makeRelease({
      file: join(dir, "next.bin"),
      privateKey: parsePrivateKey(keys.privatePem),
      out: join(dir, "www"),
      kind: "model",
      version: "2.0.0",
      now: 0,
    });
    manifest = verifyManifest(release.signed, [keys.publicText]);
    server = await RangeServer.start(join(dir, "www"));
  });
  after(async () => {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  beforeEach(() => {
    server.sent = 0;
    server.cutAfter = undefined;
    server.tamper = undefined;
    rmSync(join(dir, "stage"), { recursive: true, force: true });
    mkdirSync(join(dir, "stage"));
  });

  const index = () => manifest.index as ChunkIndex;
  const run = (o: { current?: string; maxRange?: number } = {}) =>
    assemble({
      sha256: manifest.sha256,
      size: manifest.size,
      index: index(),
      ...(o.current ? { current: o.current } : {}),
      source: httpSource({ url: server.url(manifest.artifact), size: manifest.size, timeoutMs: 5000 }),
      partial: join(dir, "stage", "next.partial"),
      ready: join(dir, "stage", "next.ready"),
      maxRange: o.maxRange ?? 256 * 1024,
    });

  it("fetches only the chunks the current file lacks, and the result is the release, byte for byte", async () => {
    const p = await run({ current });
    assert.ok(readFileSync(join(dir, "stage", "next.ready")).equals(next));
    assert.equal(p.fetched, server.sent);
    assert.ok(server.sent < 100_000 + 4 * 64 * 1024, `fetched ${server.sent} for a 100 KB change`);
    assert.equal(p.fetched + p.reused, next.length);
    assert.ok(!existsSync(join(dir, "stage", "next.partial")));
  });

  it("a download cut halfway resumes where it stopped, three times over, and never starts again", async () => {
    let served = 0;
    for (let cut = 1; cut <= 3; cut++) {
      server.sent = 0;
      server.cutAfter = 700_000;
      assert.equal(await settled(run()), "OTA_DOWNLOAD_FAILED", `cut ${cut}`);
      served += server.sent;
    }
    server.sent = 0;
    server.cutAfter = undefined;
    const p = await run();
    served += server.sent;
    assert.ok(readFileSync(join(dir, "stage", "next.ready")).equals(next));
    assert.ok(p.resumed >= 3 * 700_000 - 3 * 256 * 1024, `resumed ${p.resumed}`);
    // Each cut loses at most the range in flight; nothing that was written is fetched again.
    assert.ok(served <= next.length + 3 * 256 * 1024, `served ${served} for a ${next.length}-byte file`);
  });

  it("a torn partial file: the damaged chunks are fetched again, the rest kept", async () => {
    assert.equal((await run()).fetched, next.length);
    const ready = join(dir, "stage", "next.ready");
    const torn = readFileSync(ready);
    torn.fill(0, 1_000_000, 1_020_000);
    rmSync(ready);
    writeFileSync(join(dir, "stage", "next.partial"), torn);
    server.sent = 0;
    const p = await run();
    assert.ok(p.fetched > 0 && p.fetched < 3 * 256 * 1024, `fetched ${p.fetched}`);
    assert.ok(readFileSync(ready).equals(next));
  });

  it("a corrupt chunk and an artifact larger than declared are refused with their codes; nothing is made ready", async () => {
    server.tamper = (b, offset) => {
      const copy = Buffer.from(b);
      const at = 2_000_000 - offset;
      if (at >= 0 && at < copy.length) copy[at] = (copy[at] ?? 0) ^ 0xff;
      return copy;
    };
    assert.equal(await settled(run()), "OTA_CHUNK_CORRUPT");
    assert.ok(!existsSync(join(dir, "stage", "next.ready")));
    server.tamper = undefined;
    writeFileSync(join(dir, "www", "bigger.bin"), Buffer.concat([next, Buffer.from("extra")]));
    const bigger = httpSource({ url: server.url("bigger.bin"), size: manifest.size, timeoutMs: 5000 });
    assert.equal(await settled(bigger.read(0, 1000)), "OTA_SIZE_MISMATCH");
    const missing = httpSource({ url: server.url("nope.bin"), size: manifest.size, timeoutMs: 5000 });
    assert.equal(await settled(missing.read(0, 1000)), "OTA_DOWNLOAD_FAILED");
  });
});
