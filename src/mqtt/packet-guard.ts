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

/** A packet the filter left out: its size, and for a PUBLISH its topic, QoS and packet id (to acknowledge it). */
export interface DroppedPacket {
  size: number;
  type: number;
  qos: number;
  topic?: string;
  packetId?: number;
}

/**
 * Removes every packet larger than `limit` from the bytes coming from the broker, reading past it instead of
 * buffering it, and reports each (MQTT 3.1.1 cannot announce a maximum packet size: a broker sends what it
 * has, and one it keeps for a persistent session would otherwise come back at every connect). The bytes of
 * every other packet pass unchanged, a whole chunk as the same buffer. A remaining length over 4 bytes throws.
 */
export class PacketFilter {
  private readonly limit: number;
  private readonly dropped: (p: DroppedPacket) => void;
  /** Fixed-header bytes of the next packet not yet complete, carried over from earlier chunks. */
  private header: number[] = [];
  private mode: "header" | "pass" | "drop" = "header";
  private left = 0;
  private drop: { size: number; first: number; peek: Buffer[]; peeked: number } | undefined;

  constructor(limit: number, dropped: (p: DroppedPacket) => void) {
    this.limit = limit;
    this.dropped = dropped;
  }

  filter(chunk: Buffer): Buffer {
    const out: Buffer[] = [];
    // Header bytes that arrived in earlier chunks, not yet passed on (their packet was not decided).
    let carried = this.mode === "header" ? this.header.length : 0;
    // The start of the range of this chunk to pass on (-1: none open), and where the current header began here.
    let from = this.mode === "pass" ? 0 : -1;
    let headerAt = 0;
    const close = (end: number) => {
      if (from >= 0 && end > from) out.push(chunk.subarray(from, end));
      from = -1;
    };
    let i = 0;
    while (i < chunk.length) {
      if (this.mode === "pass") {
        const k = Math.min(this.left, chunk.length - i);
        i += k;
        this.left -= k;
        if (this.left === 0) this.mode = "header";
        continue;
      }
      if (this.mode === "drop") {
        const d = this.drop as NonNullable<typeof this.drop>;
        const k = Math.min(this.left, chunk.length - i);
        // A PUBLISH's topic and packet id, kept to acknowledge it: at most 2 + 65535 + 2 bytes.
        if (d.first >> 4 === 3 && d.peeked < 65539) {
          const part = chunk.subarray(i, i + Math.min(k, 65539 - d.peeked));
          d.peek.push(part);
          d.peeked += part.length;
        }
        i += k;
        this.left -= k;
        if (this.left === 0) {
          this.mode = "header";
          this.report(d);
        }
        continue;
      }
      if (this.header.length === carried) headerAt = i; // its first byte in this chunk
      const byte = chunk[i] as number;
      this.header.push(byte);
      i += 1;
      if (this.header.length === 1 || (byte & 0x80) !== 0) {
        if (this.header.length > 5) throw new Error("a packet's remaining length is longer than 4 bytes");
        continue;
      }
      let remaining = 0;
      for (let h = this.header.length - 1; h >= 1; h--)
        remaining = remaining * 128 + ((this.header[h] as number) & 0x7f);
      const size = this.header.length + remaining;
      const first = this.header[0] as number;
      if (size > this.limit) {
        close(headerAt);
        this.drop = { size, first, peek: [], peeked: 0 };
        this.mode = remaining > 0 ? "drop" : "header";
        this.left = remaining;
        if (remaining === 0) this.report(this.drop);
      } else {
        if (carried > 0) out.push(Buffer.from(this.header.slice(0, carried)));
        if (from < 0) from = headerAt;
        this.mode = remaining > 0 ? "pass" : "header";
        this.left = remaining;
      }
      this.header = [];
      carried = 0;
    }
    // A header not complete yet is held back: its bytes wait in this.header for the next chunk.
    close(this.mode === "header" && this.header.length > carried ? headerAt : chunk.length);
    if (out.length === 1 && out[0]?.length === chunk.length) return chunk;
    return out.length === 1 ? (out[0] as Buffer) : Buffer.concat(out);
  }

  private report(d: { size: number; first: number; peek: Buffer[] }): void {
    const type = d.first >> 4;
    const qos = (d.first >> 1) & 3;
    const p: DroppedPacket = { size: d.size, type, qos };
    if (type === 3) {
      const head = Buffer.concat(d.peek);
      if (head.length >= 2) {
        const length = head.readUInt16BE(0);
        if (head.length >= 2 + length) p.topic = head.toString("utf8", 2, 2 + length);
        if (qos > 0 && head.length >= 4 + length) p.packetId = head.readUInt16BE(2 + length);
      }
    }
    this.dropped(p);
  }
}
