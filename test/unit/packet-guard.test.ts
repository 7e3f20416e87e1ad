import assert from "node:assert/strict";
import { test } from "node:test";
import mqttPacket from "mqtt-packet";
import { packetGuard } from "../../src/mqtt/packet-guard.ts";

/** A real PUBLISH packet as a broker would send it. */
function publish(topic: string, bytes: number): Buffer {
  return mqttPacket.generate({
    cmd: "publish",
    topic,
    payload: Buffer.alloc(bytes, 1),
    qos: 0,
    dup: false,
    retain: false,
  } as mqttPacket.IPublishPacket);
}

/** Feeds the stream to a guard in chunks of `size` bytes; returns what it tripped on. */
function feed(stream: Buffer, size: number, limit: number) {
  const trips: { size: number; topic: string | undefined }[] = [];
  const guard = packetGuard(limit, (s, topic) => trips.push({ size: s, topic }));
  for (let at = 0; at < stream.length; at += size) guard(stream.subarray(at, at + size));
  return trips;
}

test("packets under the limit pass, however the stream is cut; the first one over it trips, with its topic", () => {
  const small = [publish("a/b", 10), publish("c", 200), publish("d", 20_000), publish("e", 0)];
  const big = publish("outpost/v1/d/cmd/ping", 70_000);
  const stream = Buffer.concat([...small, big, publish("f", 1)]);
  for (const chunk of [1, 2, 3, 7, 100, 4096, 65_536, stream.length]) {
    const trips = feed(stream, chunk, 65_536);
    assert.equal(trips.length, 1, `chunks of ${chunk}`);
    assert.equal(trips[0]?.size, big.length);
    // The topic is known when the chunk that ends the header also holds it.
    if (chunk >= 4096) assert.equal(trips[0]?.topic, "outpost/v1/d/cmd/ping");
  }
  assert.deepEqual(feed(Buffer.concat(small), 5, 65_536), []);
});
