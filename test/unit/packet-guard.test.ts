import assert from "node:assert/strict";
import { describe, it, test } from "node:test";
import fc from "fast-check";
import mqttPacket from "mqtt-packet";
import { PacketFilter, packetGuard } from "../../src/mqtt/packet-guard.ts";

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

describe("PacketFilter (issue 22, item 7): oversized packets are read past, everything else passes unchanged", () => {
  /** A PUBLISH (QoS 1, its packet id) or a PINGRESP-like packet with `body` bytes, its fixed header encoded. */
  const packet = (kind: "publish" | "other", id: number, bodyBytes: number): Buffer => {
    let body: Buffer;
    if (kind === "publish") {
      const topic = Buffer.from(`t/${id}`);
      body = Buffer.concat([
        Buffer.from([topic.length >> 8, topic.length & 255]),
        topic,
        Buffer.from([id >> 8, id & 255]),
        Buffer.alloc(bodyBytes, id & 255),
      ]);
    } else body = Buffer.alloc(bodyBytes % 7, 1);
    const len: number[] = [];
    let n = body.length;
    do {
      let b = n % 128;
      n = Math.floor(n / 128);
      if (n > 0) b |= 0x80;
      len.push(b);
    } while (n > 0);
    return Buffer.concat([Buffer.from([kind === "publish" ? 0x32 : 0xd0, ...len]), body]);
  };

  it("any packets, any chunking: the output is exactly the packets within the limit; each dropped one is reported", () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.constantFrom("publish" as const, "other" as const), fc.integer({ min: 0, max: 3000 })), {
          maxLength: 30,
        }),
        fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 20 }),
        (specs, cuts) => {
          const limit = 1000;
          const packets = specs.map(([kind, size], i) => packet(kind, i + 1, size));
          const wire = Buffer.concat(packets);
          const dropped: { size: number; topic?: string; packetId?: number }[] = [];
          const f = new PacketFilter(limit, (d) => dropped.push(d));
          const out: Buffer[] = [];
          for (let at = 0, c = 0; at < wire.length; c++) {
            const n = cuts[c % cuts.length] ?? 1;
            out.push(f.filter(wire.subarray(at, at + n)));
            at += n;
          }
          const kept = packets.filter((p) => p.length <= limit);
          assert.deepEqual(Buffer.concat(out), Buffer.concat(kept));
          const expected = packets
            .map((p, i) => ({ p, i }))
            .filter(({ p }) => p.length > limit)
            .map(({ p, i }) =>
              p[0] === 0x32 ? { size: p.length, topic: `t/${i + 1}`, packetId: i + 1 } : { size: p.length },
            );
          assert.deepEqual(
            dropped.map((d) => ({ size: d.size, ...(d.topic ? { topic: d.topic, packetId: d.packetId } : {}) })),
            expected,
          );
        },
      ),
      { numRuns: 300 },
    );
  });
});
