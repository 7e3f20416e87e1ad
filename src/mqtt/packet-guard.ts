/**
 * Watches the bytes coming from the broker and calls `oversized` as soon as a packet's fixed header
 * announces more than `limit` bytes, before MQTT.js buffers the packet whole (it does, on MQTT 3.1.1, and
 * on MQTT 5 with a broker that ignores our Maximum Packet Size). Only headers are read: the cost is a few
 * operations per packet, not per byte.
 */
export function packetGuard(limit: number, oversized: (size: number, topic: string | undefined) => void) {
  // Where the next fixed header starts, relative to the start of the next chunk.
  let skip = 0;
  let header: number[] = [];
  let tripped = false;
  return (chunk: Buffer): void => {
    let at = skip;
    skip = 0;
    while (!tripped && at < chunk.length) {
      header.push(chunk[at] as number);
      at += 1;
      // Byte 0 is the packet type; then 1 to 4 bytes of remaining length, 7 bits each, high bit = more.
      const last = header.at(-1) as number;
      if (header.length === 1 || (last & 0x80) !== 0) {
        if (header.length > 5) {
          tripped = true;
          oversized(Number.POSITIVE_INFINITY, undefined);
        }
        continue;
      }
      let remaining = 0;
      for (let i = header.length - 1; i >= 1; i--) remaining = remaining * 128 + ((header[i] as number) & 0x7f);
      const size = header.length + remaining;
      const type = (header[0] as number) >> 4;
      header = [];
      if (size > limit) {
        tripped = true;
        oversized(size, type === 3 ? topicAt(chunk, at) : undefined);
        return;
      }
      at += remaining;
    }
    if (at > chunk.length) skip = at - chunk.length;
  };
}

/** The topic of a PUBLISH whose variable header starts at `at`, if the chunk holds it. */
function topicAt(chunk: Buffer, at: number): string | undefined {
  if (at + 2 > chunk.length) return undefined;
  const length = chunk.readUInt16BE(at);
  if (at + 2 + length > chunk.length) return undefined;
  return chunk.toString("utf8", at + 2, at + 2 + length);
}
