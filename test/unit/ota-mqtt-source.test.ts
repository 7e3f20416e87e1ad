// Issue 22, item 2: any broker client can publish on P/D/update/data. A forged answer (bytes that fail their
// hashes, or an `{"id", "error"}`) must not end an update: it is dropped, the genuine answer still counts, and
// only the range timeout fails a range.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";
import type { DirectChannel } from "../../src/kernel/module.ts";
import { encodeAnswer, MqttFetcher } from "../../src/ota/mqtt-source.ts";

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
