// Issue 22, item 5: the /metrics listener caps its connections and the time a connection may take to send its
// request (15,000 idle connections added 140 MiB within Node's default 60 s header timeout).
import assert from "node:assert/strict";
import { connect, type Socket } from "node:net";
import { describe, it } from "node:test";
import { pino } from "pino";
import { Registry } from "prom-client";
import { HEADERS_TIMEOUT_MS, HttpEndpoint, MAX_CONNECTIONS } from "../../src/observability/http.ts";

async function waitFor(what: string, timeoutMs: number, done: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("the /metrics listener's bounds", () => {
  it(`${MAX_CONNECTIONS} connections at most; idle and slow ones are closed; a scrape then works`, async () => {
    const endpoint = new HttpEndpoint({
      listen: "127.0.0.1:0",
      registry: new Registry(),
      health: () => ({ ok: true, reasons: [] }),
      logger: pino({ level: "silent" }),
    });
    await endpoint.start();
    const port = endpoint.address?.port ?? 0;
    const sockets: Socket[] = [];
    let closed = 0;
    try {
      for (let i = 0; i < 300; i++) {
        const s = connect(port, "127.0.0.1");
        s.on("error", () => {});
        s.on("close", () => {
          closed += 1;
        });
        sockets.push(s);
      }
      // One slow client: a header line now and then, never the end of its headers.
      const slow = sockets[0] as Socket;
      slow.write("GET /metrics HTTP/1.1\r\n");
      const drip = setInterval(() => slow.write("x-slow: 1\r\n"), 500);
      try {
        await waitFor(
          `the ${300 - MAX_CONNECTIONS} over the cap closed`,
          10_000,
          () => closed >= 300 - MAX_CONNECTIONS,
        );
        await waitFor("every idle or slow connection closed", HEADERS_TIMEOUT_MS + 15_000, () => closed === 300);
      } finally {
        clearInterval(drip);
      }
      const res = await fetch(`http://127.0.0.1:${port}/metrics`);
      assert.equal(res.status, 200);
    } finally {
      for (const s of sockets) s.destroy();
      await endpoint.stop();
    }
  });
});
