// npm run bench -- --only board: the issue-14 figures. CPU per telemetry sample (the default collector set, on
// this machine and on the Pi 4 fixture tree) against Debian's prometheus-node-exporter answering one scrape;
// telemetry messages and bytes per hour of an idle device with and without deadbands; the cost of a /metrics scrape.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { detectBoard } from "../src/telemetry/boards/detect.ts";
import { deviceCollectors } from "../src/telemetry/module.ts";
import { HOST_ROOTS, type Roots } from "../src/telemetry/sysfs.ts";
import { Telemetry } from "../src/telemetry/telemetry.ts";
import { AgentProcess, ROOT } from "../test/helpers/agent-process.ts";
import type { Mosquitto } from "../test/helpers/mosquitto.ts";
import type { Watch } from "../test/helpers/mqtt-watch.ts";
import { freePort } from "../test/helpers/ports.ts";

export interface BenchRow {
  metric: string;
  outpost: number;
  bare?: number;
  unit: string;
  note?: string;
}

type CpuOf = (pid: number) => number;

/** CPU milliseconds per sample of the default collectors, in this process (the pinned Node: the binary's V8). */
async function sampleCost(roots: Roots, samples: number): Promise<number> {
  const telemetry = new Telemetry({
    collectors: deviceCollectors({
      roots,
      board: detectBoard(roots),
      stateDir: tmpdir(),
      now: () => performance.now(),
    }),
    intervalMs: () => 1000,
    timeoutMs: () => 5000,
    publish: () => {},
    logger: pino({ level: "silent" }),
  });
  for (let i = 0; i < 50; i++) await telemetry.sample(); // warm-up: the JIT, the file cache
  const before = process.cpuUsage();
  for (let i = 0; i < samples; i++) await telemetry.sample();
  const used = process.cpuUsage(before);
  return (used.user + used.system) / 1000 / samples;
}

async function scrapeCost(
  url: string,
  pid: number,
  cpuOf: CpuOf,
  scrapes: number,
): Promise<{ ms: number; bytes: number; series: number }> {
  let text = "";
  for (let i = 0; i < 20; i++) text = await (await fetch(url)).text();
  const before = cpuOf(pid);
  for (let i = 0; i < scrapes; i++) text = await (await fetch(url)).text();
  const ms = ((cpuOf(pid) - before) * 1000) / scrapes;
  const series = text.split("\n").filter((l) => l && !l.startsWith("#")).length;
  return { ms, bytes: Buffer.byteLength(text), series };
}

async function waitForHttp(url: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      if ((await fetch(url)).ok) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`${url} did not answer`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Telemetry of an idle device per hour at the default 10 s interval and 5 min full interval, measured at 10x
 * speed (1 s and 30 s: the same 30 samples per full one) for `seconds`, with deadbands and without (every
 * sample full). Faster is not representative: CPU busy over 200 ms windows swings by more than the 5-point
 * band on an idle machine (99 of 101 partial samples at 200 ms were per-core CPU; 1 of 60 at 1 s).
 */
async function perHour(
  bin: string,
  broker: Mosquitto,
  watch: Watch,
  seconds: number,
  deadbands: boolean,
): Promise<{ messages: number; bytes: number; samples: number }> {
  const id = `bench-delta-${deadbands ? "on" : "off"}`;
  const agent = AgentProcess.run([bin], {
    device: { id },
    mqtt: { url: broker.url },
    telemetry: { interval: "1s", fullInterval: deadbands ? "30s" : "1s" },
  });
  const mine = () => watch.items.filter((m) => m.topic === `outpost/v1/${id}/telemetry`);
  try {
    await watch.waitFor((m) => m.topic === `outpost/v1/${id}/telemetry`, 30_000, "first telemetry");
    const from = mine().length;
    const started = performance.now();
    await new Promise((r) => setTimeout(r, seconds * 1000));
    const elapsed = (performance.now() - started) / 1000;
    const got = mine().slice(from);
    const samples = elapsed;
    const scale = 360 / samples; // samples per hour at 10 s
    const bytes = got.reduce((n, m) => n + Buffer.byteLength(m.topic) + Buffer.byteLength(m.text), 0);
    return { messages: got.length * scale, bytes: bytes * scale, samples };
  } finally {
    await agent.stop("SIGTERM");
    await agent.cleanup();
  }
}

export async function boardRows(
  rows: BenchRow[],
  o: { bin: string; broker: Mosquitto; watch: Watch; cpuOf: CpuOf; seconds: number },
): Promise<void> {
  const samples = 2000;
  const host = await sampleCost(HOST_ROOTS, samples);
  const fixture = join(ROOT, "test", "fixtures", "boards", "pi4");
  const pi = await sampleCost(
    { proc: join(fixture, "proc"), sys: join(fixture, "sys"), host: join(fixture, "host") },
    samples,
  );

  const port = await freePort();
  const exporter: ChildProcess = spawn("prometheus-node-exporter", [`--web.listen-address=127.0.0.1:${port}`], {
    stdio: "ignore",
  });
  let node: { ms: number; bytes: number; series: number };
  try {
    await waitForHttp(`http://127.0.0.1:${port}/metrics`);
    node = await scrapeCost(`http://127.0.0.1:${port}/metrics`, exporter.pid ?? 0, o.cpuOf, 200);
  } finally {
    exporter.kill("SIGKILL");
  }
  rows.push({
    metric: "CPU per telemetry sample, default collectors (this host)",
    outpost: host,
    bare: node.ms,
    unit: "ms",
    note: `bare = prometheus-node-exporter 1.5 (Debian, default collectors: ${node.series} series) answering one scrape; ${samples} samples`,
  });
  rows.push({
    metric: "CPU per telemetry sample, Pi 4 fixture tree",
    outpost: pi,
    bare: node.ms,
    unit: "ms",
    note: "the same set plus the pi collector, reading test/fixtures/boards/pi4",
  });

  const dir = mkdtempSync(join(tmpdir(), "outpost-bench-http-"));
  const httpPort = await freePort();
  const agent = AgentProcess.run([o.bin], {
    device: { id: "bench-scrape" },
    mqtt: { url: o.broker.url },
    telemetry: { interval: "10s" },
    http: { listen: `127.0.0.1:${httpPort}` },
  });
  try {
    await o.watch.waitFor((m) => m.topic === "outpost/v1/bench-scrape/telemetry", 30_000, "first telemetry");
    const ours = await scrapeCost(`http://127.0.0.1:${httpPort}/metrics`, agent.child.pid ?? 0, o.cpuOf, 200);
    rows.push({
      metric: "CPU per /metrics scrape",
      outpost: ours.ms,
      bare: node.ms,
      unit: "ms",
      note: `${ours.series} series, ${(ours.bytes / 1024).toFixed(1)} KiB; bare = node-exporter (${node.series} series, ${(node.bytes / 1024).toFixed(1)} KiB)`,
    });
  } finally {
    await agent.stop("SIGTERM");
    await agent.cleanup();
    rmSync(dir, { recursive: true, force: true });
  }

  const off = await perHour(o.bin, o.broker, o.watch, o.seconds, false);
  const on = await perHour(o.bin, o.broker, o.watch, o.seconds, true);
  const note = `idle, 10 s interval and 5 min full samples, measured at 10x speed for ${o.seconds} s (${Math.round(on.samples)} samples); bare = every sample full`;
  rows.push({
    metric: "telemetry messages per hour, idle, with deadbands",
    outpost: on.messages,
    bare: off.messages,
    unit: "msg",
    note,
  });
  rows.push({
    metric: "telemetry bytes per hour, idle, with deadbands",
    outpost: on.bytes / 1024,
    bare: off.bytes / 1024,
    unit: "KiB",
    note,
  });
}
