import { type AddressInfo, createConnection, createServer, type Server, type Socket } from "node:net";

/**
 * A TCP proxy on loopback for fault injection. `blackhole()` makes it a silent partition: connections stay
 * open and new ones are accepted, but no byte gets through in either direction, like a dead uplink whose
 * TCP never resets. `heal()` drops the held connections (NAT state is gone) and forwards again.
 */
export class FaultProxy {
  private readonly server: Server;
  private readonly pairs = new Set<[Socket, Socket]>();
  private holes = false;
  /** While down, every connection is closed at once: the device is offline, the broker up. */
  private isDown = false;
  /** Holds the broker's SUBACK (and what follows it) for this long: a slow subscription round trip. */
  private subackDelayMs = 0;
  /** Connections still to cut when the client sends its first PUBLISH (before it reaches the broker). */
  private cutsOnPublish = 0;
  port = 0;

  private constructor(targetPort: number) {
    this.server = createServer((client) => {
      if (this.isDown) {
        client.destroy();
        return;
      }
      const upstream = createConnection({ host: "127.0.0.1", port: targetPort });
      const pair: [Socket, Socket] = [client, upstream];
      this.pairs.add(pair);
      const forward = (from: Socket, to: Socket) =>
        from.on("data", (chunk) => {
          if (!this.holes && !to.destroyed && !from.destroyed) to.write(chunk);
        });
      let cut = false;
      client.on("data", (chunk: Buffer) => {
        // The birth is the first packet of its write (it follows the SUBACK): its type is in the first byte.
        if (cut || this.cutsOnPublish === 0 || chunk[0] === undefined || chunk[0] >> 4 !== 3) return;
        cut = true;
        this.cutsOnPublish -= 1;
        client.destroy();
        upstream.destroy();
      });
      forward(client, upstream);
      // Broker to client: a SUBACK (type 9 in the first byte of its write) and everything after it for the next
      // subackDelayMs are held back, in order.
      let holdUntil = 0;
      let held: Buffer[] = [];
      upstream.on("data", (chunk: Buffer) => {
        const now = Date.now();
        if (this.subackDelayMs > 0 && holdUntil === 0 && chunk[0] !== undefined && chunk[0] >> 4 === 9) {
          holdUntil = now + this.subackDelayMs;
          setTimeout(() => {
            for (const c of held) if (!client.destroyed) client.write(c);
            held = [];
          }, this.subackDelayMs);
        }
        if (now < holdUntil || held.length > 0) held.push(chunk);
        else if (!this.holes && !client.destroyed && !upstream.destroyed) client.write(chunk);
      });
      const close = () => {
        this.pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on("close", close);
      upstream.on("close", close);
      client.on("error", close);
      upstream.on("error", close);
    });
  }

  static async start(targetPort: number): Promise<FaultProxy> {
    const proxy = new FaultProxy(targetPort);
    await new Promise<void>((resolve) => proxy.server.listen(0, "127.0.0.1", () => resolve()));
    proxy.port = (proxy.server.address() as AddressInfo).port;
    return proxy;
  }

  /** The next `count` connections are cut as the client sends its first PUBLISH, which never arrives. */
  cutOnFirstPublish(count = 1): void {
    this.cutsOnPublish = count;
  }

  /** Every new connection's SUBACK arrives `ms` late. */
  delaySuback(ms: number): void {
    this.subackDelayMs = ms;
  }

  /** Drops every connection and refuses new ones until `up()`. */
  down(): void {
    this.isDown = true;
    this.heal();
    this.isDown = true;
  }

  up(): void {
    this.isDown = false;
  }

  blackhole(): void {
    this.holes = true;
  }

  heal(): void {
    for (const [a, b] of this.pairs) {
      a.destroy();
      b.destroy();
    }
    this.pairs.clear();
    this.holes = false;
  }

  async close(): Promise<void> {
    this.heal();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
