import { isIP, type Socket, connect as tcpConnect } from "node:net";
import { Duplex } from "node:stream";
import { type TLSSocket, connect as tlsConnect } from "node:tls";
import type { IClientOptions } from "mqtt";
import { reclaimEvery } from "../core/reclaim.ts";
import { type DroppedPacket, PacketFilter } from "./packet-guard.ts";

/**
 * The broker connection MQTT.js reads and writes, with every packet over `limit` read past instead of handed to
 * MQTT.js (which would buffer it whole). A dropped QoS 1 or 2 PUBLISH is acknowledged here (PUBACK, or PUBREC
 * whose PUBREL MQTT.js completes), so that a broker keeping a persistent session does not deliver it again at
 * the next connect: on MQTT 3.1.1 a device cannot announce a maximum packet size, and dropping the connection
 * instead looped for ever. The socket is made as MQTT.js's own tcp and tls builders make it.
 */
export class FilteredStream extends Duplex {
  readonly socket: Socket | TLSSocket;

  constructor(options: IClientOptions, limit: number, dropped: (p: DroppedPacket) => void) {
    super();
    const host = options.host ?? "localhost";
    const port = options.port ?? (options.protocol === "mqtts" ? 8883 : 1883);
    this.socket =
      options.protocol === "mqtts"
        ? tlsConnect({
            host,
            port,
            ...(options.ca ? { ca: options.ca } : {}),
            ...(options.cert ? { cert: options.cert } : {}),
            ...(options.key ? { key: options.key } : {}),
            ...(isIP(host) === 0 ? { servername: host } : {}),
            rejectUnauthorized: options.rejectUnauthorized !== false,
          })
        : tcpConnect({ host, port });
    const filter = new PacketFilter(limit, (p) => {
      // PUBACK for QoS 1, PUBREC for QoS 2: written whole, between MQTT.js's own whole packets.
      if (p.packetId !== undefined && p.qos > 0)
        this.socket.write(Buffer.from([p.qos === 1 ? 0x40 : 0x50, 2, p.packetId >> 8, p.packetId & 255]));
      dropped(p);
    });
    // A message read past is many dead socket buffers: collected every few MiB so it costs no memory.
    const collect = reclaimEvery(4 * 1024 * 1024);
    this.socket.on("data", (chunk: Buffer) => {
      collect(chunk.length);
      let out: Buffer;
      try {
        out = filter.filter(chunk);
      } catch (err) {
        this.destroy(err as Error);
        return;
      }
      if (out.length > 0 && !this.push(out)) this.socket.pause();
    });
    this.socket.on("end", () => this.push(null));
    this.socket.on("error", (err) => this.destroy(err));
    this.socket.on("close", () => this.destroy());
    this.socket.on("connect", () => this.emit("connect"));
    this.socket.on("secureConnect", () => this.emit("secureConnect"));
  }

  override _read(): void {
    this.socket.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, done: (err?: Error | null) => void): void {
    this.socket.write(chunk, done);
  }

  override _final(done: (err?: Error | null) => void): void {
    this.socket.end(done);
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    this.socket.destroy();
    done(err);
  }

  setNoDelay(noDelay?: boolean): this {
    this.socket.setNoDelay(noDelay);
    return this;
  }
}
