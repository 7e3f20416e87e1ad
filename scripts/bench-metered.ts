// Issue 27: what an idle agent costs a metered link and its flash. The built agent with its defaults (10 s
// telemetry with deadbands, a full report every 5 min, 30 s keepalive) talks to the broker through a proxy that
// counts the bytes each way (MQTT as TCP carries it; TCP/IP headers are not counted), and /proc/PID/io says
// what it wrote. Scaled to a day and an hour from `seconds` of idling.
import { readFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { createServer, connect as netConnect, type Socket } from "node:net";
import { AgentProcess } from "../test/helpers/agent-process.ts";
import type { Mosquitto } from "../test/helpers/mosquitto.ts";
import type { Watch } from "../test/helpers/mqtt-watch.ts";
import type { BenchRow } from "./bench-board.ts";

const DEVICE = "bench-metered";

function io(pid: number): { wchar: number; writeBytes: number } {
  const text = readFileSync(`/proc/${pid}/io`, "utf8");
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, "m").exec(text)?.[1] ?? Number.NaN);
  return { wchar: field("wchar"), writeBytes: field("write_bytes") };
}

export async function meteredRows(
  rows: BenchRow[],
  o: { bin: string; broker: Mosquitto; watch: Watch; seconds: number },
) {
  const counted = { up: 0, down: 0 };
  const sockets = new Set<Socket>();
  const proxy = createServer((client) => {
    const upstream = netConnect(o.broker.port, "127.0.0.1");
    sockets.add(client).add(upstream);
    client.on("data", (b: Buffer) => {
      counted.up += b.length;
    });
    upstream.on("data", (b: Buffer) => {
      counted.down += b.length;
    });
    client.pipe(upstream).pipe(client);
    const close = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on("close", close).on("error", close);
    upstream.on("close", close).on("error", close);
  });
  await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", () => r()));
  const port = (proxy.address() as AddressInfo).port;
  const agent = AgentProcess.run([o.bin], { device: { id: DEVICE }, mqtt: { url: `mqtt://127.0.0.1:${port}` } });
  try {
    await o.watch.waitFor((m) => m.topic === `outpost/v1/${DEVICE}/telemetry`, 30_000, "first telemetry");
    // From here on: the start (birth, discovery of the board, the first full report) is behind it.
    await new Promise((r) => setTimeout(r, 5000));
    const pid = agent.child.pid ?? 0;
    const start = { ...counted, io: io(pid), messages: o.watch.items.length, at: performance.now() };
    await new Promise((r) => setTimeout(r, o.seconds * 1000));
    const end = { ...counted, io: io(pid), at: performance.now() };
    const perDay = (n: number) => (n / ((end.at - start.at) / 1000)) * 86_400;
    const perHour = (n: number) => perDay(n) / 24;
    const published = o.watch.items
      .slice(start.messages)
      .filter((m) => m.topic.startsWith(`outpost/v1/${DEVICE}/`)).length;
    const note = `${o.seconds} s idle at the defaults (10 s telemetry with deadbands, full every 5 min, keepalive 30 s), scaled; ${published} messages published`;
    rows.push({
      metric: "MQTT bytes per day at idle, device to broker",
      outpost: perDay(end.up - start.up) / 1024,
      unit: "KiB/day",
      note,
    });
    rows.push({
      metric: "MQTT bytes per day at idle, broker to device",
      outpost: perDay(end.down - start.down) / 1024,
      unit: "KiB/day",
      note: "PUBACKs and PINGRESPs; TCP/IP headers not counted",
    });
    rows.push({
      metric: "bytes written per hour at idle (write_bytes)",
      outpost: perHour(end.io.writeBytes - start.io.writeBytes) / 1024,
      unit: "KiB/hour",
      note: `to storage (/proc/PID/io write_bytes); written through syscalls (wchar, logs on stdout included): ${(perHour(end.io.wchar - start.io.wchar) / 1024).toFixed(1)} KiB/hour`,
    });
  } finally {
    await agent.stop("SIGTERM");
    await agent.cleanup();
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => proxy.close(() => r()));
  }
}
