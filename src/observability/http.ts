import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Registry } from "prom-client";
import { errorMessage } from "../core/errors.ts";
import { type Component, once } from "../core/lifecycle.ts";
import type { Logger } from "../core/logger.ts";
import type { HealthReport } from "../kernel/health.ts";

export interface HttpOptions {
  /** `host:port` (`[::1]:9464` for IPv6). */
  listen: string;
  registry: Registry;
  health: () => HealthReport;
  logger: Logger;
}

/** Connections at once: a few scrapers and a health check need far fewer. */
export const MAX_CONNECTIONS = 64;
export const HEADERS_TIMEOUT_MS = 5000;
export const REQUEST_TIMEOUT_MS = 10_000;

/** `127.0.0.1:9464` -> host and port; `[::1]:9464` for IPv6. */
export function parseListen(listen: string): { host: string; port: number } {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(listen);
  const port = Number(match?.[3]);
  if (!match || port > 65_535) throw new Error(`expected host:port, got ${JSON.stringify(listen)}`);
  return { host: match[1] ?? match[2] ?? "", port };
}

/**
 * The optional HTTP listener: `/metrics` (Prometheus text format, from the one registry) and `/healthz`
 * (200 when the kernel is healthy, 503 otherwise, a JSON body saying why). Nothing else is served; a failure
 * to listen is logged and reported by health, never fatal.
 */
export class HttpEndpoint implements Component {
  readonly name = "http";
  private server: Server | undefined;
  private readonly o: HttpOptions;
  problem: string | undefined;
  scrapes = 0;

  constructor(options: HttpOptions) {
    this.o = options;
  }

  get address(): { host: string; port: number } | undefined {
    const a = this.server?.address();
    return a && typeof a === "object" ? { host: a.address, port: a.port } : undefined;
  }

  async start(): Promise<void> {
    const { host, port } = parseListen(this.o.listen);
    // Bounded: at most MAX_CONNECTIONS at once (more are closed as they arrive); a connection that has not sent
    // its headers within HEADERS_TIMEOUT_MS (a slow drip), or its request within REQUEST_TIMEOUT_MS, or that is
    // silent for HEADERS_TIMEOUT_MS, is closed: 15,000 idle connections held 140 MiB for Node's default 60 s.
    const server = createServer(
      {
        headersTimeout: HEADERS_TIMEOUT_MS,
        requestTimeout: REQUEST_TIMEOUT_MS,
        connectionsCheckingInterval: 1000,
        keepAliveTimeout: 5000,
      },
      (req, res) => {
        this.handle(req, res).catch((err: unknown) => {
          this.o.logger.error({ err: errorMessage(err), url: req.url }, "http request failed");
          if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain" });
          res.end("internal error\n");
        });
      },
    );
    server.maxConnections = MAX_CONNECTIONS;
    // A connection silent that long is closed, one that never sent a byte too (headersTimeout covers only a
    // request that has begun); a stop does not wait for any.
    server.timeout = HEADERS_TIMEOUT_MS;
    await new Promise<void>((resolve) => {
      server.once("error", (err) => {
        this.problem = `cannot listen on ${this.o.listen}: ${errorMessage(err)}`;
        this.o.logger.error(this.problem);
        resolve();
      });
      server.listen(port, host, () => {
        this.server = server;
        server.on("error", (err) => this.o.logger.error({ err: errorMessage(err) }, "http listener error"));
        this.o.logger.info({ listen: this.o.listen }, "serving /metrics and /healthz");
        resolve();
      });
    });
  }

  readonly stop = once(async () => {
    const server = this.server;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain" });
      res.end("method not allowed\n");
      return;
    }
    if (path === "/metrics") {
      this.scrapes += 1;
      const body = await this.o.registry.metrics();
      res.writeHead(200, { "content-type": this.o.registry.contentType });
      res.end(req.method === "HEAD" ? undefined : body);
      return;
    }
    if (path === "/healthz") {
      const health = this.o.health();
      res.writeHead(health.ok ? 200 : 503, { "content-type": "application/json" });
      res.end(req.method === "HEAD" ? undefined : `${JSON.stringify(health)}\n`);
      return;
    }
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found: try /metrics or /healthz\n");
  }
}
