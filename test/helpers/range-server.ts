import { createReadStream, statSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";

/**
 * A static file server with `Range` support that counts the bytes it sends and can cut the connection after a
 * budget of bytes (a download cut halfway) or change what it serves (a corrupt or oversized artifact).
 */
export class RangeServer {
  sent = 0;
  requests = 0;
  /** Bytes to send before cutting every connection; undefined: no cut. */
  cutAfter: number | undefined;
  /** Changes the bytes of a response before they go out. */
  tamper: ((bytes: Buffer, offset: number) => Buffer) | undefined;
  private readonly server: Server;

  private constructor(dir: string) {
    this.server = createServer((req, res) => {
      this.requests += 1;
      const path = join(dir, decodeURIComponent((req.url ?? "/").split("?")[0] ?? "/"));
      let size: number;
      try {
        size = statSync(path).size;
      } catch {
        res.writeHead(404).end();
        return;
      }
      const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? "");
      const start = m ? Number(m[1]) : 0;
      const end = m ? Math.min(Number(m[2]), size - 1) : size - 1;
      res.writeHead(m ? 206 : 200, {
        "content-length": end - start + 1,
        ...(m ? { "content-range": `bytes ${start}-${end}/${size}` } : {}),
      });
      const chunks: Buffer[] = [];
      createReadStream(path, { start, end })
        .on("data", (c) => chunks.push(c as Buffer))
        .on("end", () => {
          let body: Buffer = Buffer.concat(chunks);
          if (this.tamper) body = this.tamper(body, start);
          if (this.cutAfter !== undefined && this.sent + body.length > this.cutAfter) {
            const allowed = Math.max(0, this.cutAfter - this.sent);
            this.sent += allowed;
            res.write(body.subarray(0, allowed), () => res.socket?.destroy());
            return;
          }
          this.sent += body.length;
          res.end(body);
        });
    });
  }

  static async start(dir: string): Promise<RangeServer> {
    const s = new RangeServer(dir);
    await new Promise<void>((resolve) => s.server.listen(0, "127.0.0.1", resolve));
    return s;
  }

  url(file: string): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/${file}`;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
