// Issue 22, item 2: any broker client can publish on P/D/update/data. A forged answer (bytes that fail their
// hashes, or an `{"id", "error"}`) must not end an update: it is dropped, the genuine answer still counts, and
// only the range timeout fails a range.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { zstdCompressSync, zstdDecompressSync } from "node:zlib";
import type { MqttClient } from "mqtt";
import { ReleaseServer } from "../../src/cli/release-server.ts";
import type { DirectChannel } from "../../src/kernel/module.ts";
import type { Manifest } from "../../src/ota/manifest.ts";
import { encodeAnswer, MqttFetcher, ZSTD_ID } from "../../src/ota/mqtt-source.ts";
import { tempDir } from "../helpers/temp.ts";

const GOOD = Buffer.from("the genuine bytes of this range");
const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** A broker with a forger on it: each request gets the forger's answers first, then (maybe) the server's. */
function broker(forged: (id: string) => Buffer[], genuine: boolean) {
  let deliver: (payload: Buffer) => void = () => {};
  const channel: DirectChannel = {
    listen: (_topic, handler) => {
      deliver = handler;
    },
    publish: async (_topic, payload) => {
      const { id, offset, size } = JSON.parse(String(payload)) as { id: string; offset: number; size: number };
      setImmediate(() => {
        for (const f of forged(id)) deliver(f);
        if (genuine) setTimeout(() => deliver(encodeAnswer({ id, offset, size }, GOOD)), 20);
      });
    },
  };
  return new MqttFetcher(channel, { updateGet: "get", updateData: "data" });
}

const read = (f: MqttFetcher, timeoutMs = 2000) =>
  f
    .source({ release: "0".repeat(64), file: "artifact", timeoutMs, attempts: 1 })
    .read(0, GOOD.length, undefined, (b) => sha(b) === sha(GOOD));

describe("update ranges over MQTT, with a forger on the broker", () => {
  it("a forged range (same size, wrong bytes) is dropped and the genuine answer after it is taken", async () => {
    const f = broker(
      (id) => [encodeAnswer({ id, offset: 0, size: GOOD.length }, Buffer.alloc(GOOD.length, 0x41))],
      true,
    );
    assert.deepEqual(Buffer.from(await read(f)), GOOD);
  });

  it("a forged error answer is not believed: the genuine answer after it is taken", async () => {
    const f = broker((id) => [encodeAnswer({ id, error: "forged: give up" })], true);
    assert.deepEqual(Buffer.from(await read(f)), GOOD);
  });

  it("a flood of forged answers (16 and more) does not stop the genuine one from being taken", async () => {
    // Review of issue 25's broker ACL: past 16 dropped answers every later one was ignored, the genuine too, so
    // anyone who reads update/get could fail a device's download with 16 junk answers per range.
    const f = broker((id) => Array.from({ length: 40 }, () => encodeAnswer({ id, error: "junk" })), true);
    assert.deepEqual(Buffer.from(await read(f)), GOOD);
  });

  it("with only forgeries, the range fails at its timeout, saying what was dropped", async () => {
    const f = broker(
      (id) => [
        encodeAnswer({ id, offset: 0, size: GOOD.length }, Buffer.alloc(GOOD.length, 0x41)),
        encodeAnswer({ id, error: "forged" }),
      ],
      false,
    );
    await assert.rejects(read(f, 300), (err: Error & { code?: string }) => {
      assert.equal(err.code, "OTA_DOWNLOAD_FAILED");
      assert.match(err.message, /no answer over MQTT/);
      assert.match(String((err.cause as Error | undefined)?.message), /2 answers dropped: .*"forged"/);
      return true;
    });
  });
});

describe("update ranges over MQTT, compressed (issue 27)", () => {
  const BIG = Buffer.from("outpost ".repeat(4096));
  const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
  /** A broker where `answers` is what comes back to each request (its id and size). */
  function withAnswers(answers: (id: string, size: number) => Buffer[]) {
    let deliver: (payload: Buffer) => void = () => {};
    const ids: string[] = [];
    const channel: DirectChannel = {
      listen: (_topic, handler) => {
        deliver = handler;
      },
      publish: async (_topic, payload) => {
        const { id, size } = JSON.parse(String(payload)) as { id: string; size: number };
        ids.push(id);
        setImmediate(() => {
          for (const a of answers(id, size)) deliver(a);
        });
      },
    };
    return { ids, fetcher: new MqttFetcher(channel, { updateGet: "get", updateData: "data" }) };
  }
  const readBig = (f: MqttFetcher) =>
    f
      .source({ release: "0".repeat(64), file: "artifact", timeoutMs: 2000, attempts: 1 })
      .read(0, BIG.length, undefined, (b) => sha(b) === sha(BIG));

  it("the device says it takes zstd (its ids start with z:) and takes a compressed answer", async () => {
    const { ids, fetcher } = withAnswers((id, size) => [
      encodeAnswer({ id, offset: 0, size, encoding: "zstd" }, zstdCompressSync(BIG)),
    ]);
    assert.deepEqual(Buffer.from(await readBig(fetcher)), BIG);
    assert.ok(ids[0]?.startsWith(ZSTD_ID) && (ids[0]?.length ?? 0) <= 64);
  });

  it("a zstd bomb on the data topic costs nothing: decompressed no further than the range, dropped at once", async () => {
    // 1 GiB of zeros in about 32 KiB: decompressed whole it would take the device's memory.
    const bomb = zstdCompressSync(Buffer.alloc(1024 * 1024 * 1024));
    const { fetcher } = withAnswers((id, size) => [
      encodeAnswer({ id, offset: 0, size, encoding: "zstd" }, bomb),
      encodeAnswer({ id, offset: 0, size, encoding: "zstd" }, Buffer.from("not zstd at all")),
      // Decompresses to fewer bytes than the range: dropped like any wrong bytes.
      encodeAnswer({ id, offset: 0, size, encoding: "zstd" }, zstdCompressSync(BIG.subarray(1))),
      encodeAnswer({ id, offset: 0, size }, BIG),
    ]);
    const rss = process.memoryUsage().rss;
    const t0 = performance.now();
    assert.deepEqual(Buffer.from(await readBig(fetcher)), BIG);
    assert.ok(performance.now() - t0 < 1500, "no time spent on the bomb");
    assert.ok(process.memoryUsage().rss - rss < 64 * 1024 * 1024, "no memory spent on the bomb");
  });

  it("compressed junk is decoded no more than twice a request, and the next try asks raw, where junk costs its sender", async () => {
    // 1 MiB of work for a few dozen bytes each: a flood of these, decoded, would take the device's event loop.
    const tiny = zstdCompressSync(Buffer.alloc(BIG.length, 0x41));
    const { ids, fetcher } = withAnswers((id, size) =>
      id.startsWith(ZSTD_ID)
        ? [
            ...Array.from({ length: 500 }, () => encodeAnswer({ id, offset: 0, size, encoding: "zstd" }, tiny)),
            encodeAnswer({ id, offset: 0, size, encoding: "zstd" }, zstdCompressSync(BIG)),
          ]
        : [encodeAnswer({ id, offset: 0, size }, BIG)],
    );
    const cpu = process.cpuUsage();
    const got = await fetcher
      .source({ release: "0".repeat(64), file: "artifact", timeoutMs: 300, attempts: 2 })
      .read(0, BIG.length, undefined, (b) => sha(b) === sha(BIG));
    assert.deepEqual(Buffer.from(got), BIG);
    assert.deepEqual(
      ids.map((i) => i.startsWith(ZSTD_ID)),
      [true, false],
    );
    const used = process.cpuUsage(cpu);
    assert.ok((used.user + used.system) / 1000 < 250, `${(used.user + used.system) / 1000} ms of CPU`);
  });

  it("the server answers raw to a device that did not say zstd, compressed to one that did, raw when that is not smaller", () => {
    const dir = tempDir("outpost-release-server-");
    mkdirSync(join(dir, "r"));
    const random = createHash("sha512").update("x").digest();
    writeFileSync(join(dir, "r", "a"), Buffer.concat([BIG, random]));
    const m = { sha256: "1".repeat(64), version: "1.0.0", artifact: "a", index: { chunks: [] } } as unknown as Manifest;
    const server = new ReleaseServer(join(dir, "r"), m);
    const sent: Buffer[] = [];
    const client = { publish: (_t: string, p: Buffer) => sent.push(p) } as unknown as MqttClient;
    const ask = (id: string, offset: number, size: number) =>
      server.serve(
        client,
        "p",
        "d",
        Buffer.from(JSON.stringify({ id, release: m.sha256, file: "artifact", offset, size })),
      );
    const header = (p: Buffer) => JSON.parse(p.subarray(0, p.indexOf(0x0a)).toString()) as Record<string, unknown>;
    const body = (p: Buffer) => p.subarray(p.indexOf(0x0a) + 1);
    try {
      ask("old-agent", 0, BIG.length);
      assert.deepEqual(header(sent[0] as Buffer), { id: "old-agent", offset: 0, size: BIG.length });
      assert.deepEqual(body(sent[0] as Buffer), BIG);
      ask(`${ZSTD_ID}new`, 0, BIG.length);
      assert.equal(header(sent[1] as Buffer).encoding, "zstd");
      assert.deepEqual(zstdDecompressSync(body(sent[1] as Buffer)), BIG);
      assert.ok((sent[1]?.length ?? 0) < BIG.length / 10);
      ask(`${ZSTD_ID}random`, BIG.length, random.length);
      assert.equal(header(sent[2] as Buffer).encoding, undefined);
      assert.deepEqual(body(sent[2] as Buffer), random);
      assert.equal(
        server.wireBytes,
        sent.reduce((n, p) => n + p.length, 0),
      );
    } finally {
      server.close();
    }
  });
});
