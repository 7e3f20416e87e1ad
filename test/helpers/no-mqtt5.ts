import type { AddressInfo } from "node:net";
import { createServer, connect as netConnect, type Socket } from "node:net";

/** The protocol level of an MQTT CONNECT packet (4: 3.1.1, 5: MQTT 5); undefined until enough of it came. */
export function protocolLevel(packet: Buffer): number | undefined {
  let at = 1;
  while ((packet[at] ?? 0) & 0x80) at += 1;
  at += 1; // past the remaining length
  if (packet.length < at + 2) return undefined;
  const nameLength = packet.readUInt16BE(at);
  return packet[at + 2 + nameLength];
}

/**
 * A broker in front of `targetPort` that takes MQTT 3.1.1 only. An MQTT 5 CONNECT is closed unanswered (`close`:
 * RabbitMQ 3.10) or refused with CONNACK reason 0x84, unsupported protocol version (`refuse`); 3.1.1 goes
 * through. `close()` ends it and every connection through it.
 */
export async function noMqtt5Broker(targetPort: number, mode: "close" | "refuse") {
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    // The CONNECT may come in pieces: read until its protocol level is there.
    let first = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      first = Buffer.concat([first, chunk]);
      const level = protocolLevel(first);
      if (level === undefined) return;
      s.off("data", onData);
      // Held until the pipe below takes over: a CONNECT written in several pieces (MQTT.js writes the will
      // apart) would otherwise lose its rest in between, and the connect hang until its timeout.
      s.pause();
      if (level === 5) {
        if (mode === "refuse") s.end(Buffer.from([0x20, 0x03, 0x00, 0x84, 0x00]));
        else s.destroy();
        return;
      }
      const upstream = netConnect(targetPort, "127.0.0.1", () => {
        upstream.write(first);
        s.pipe(upstream).pipe(s);
      });
      sockets.add(upstream);
      upstream.on("close", () => {
        sockets.delete(upstream);
        s.destroy();
      });
      upstream.on("error", () => s.destroy());
    };
    s.on("data", onData);
    s.on("error", () => s.destroy());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    url: `mqtt://127.0.0.1:${port}`,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
