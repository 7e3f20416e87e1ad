// npm run bench: prints a table and writes bench/results.json. Every figure for the agent is measured in the
// same run as the same figure for a bare Node process, so the agent's overhead reads as a ratio.
import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { AgentProcess, ROOT } from "../test/helpers/agent-process.ts";
import { Mosquitto } from "../test/helpers/mosquitto.ts";
import { Watch } from "../test/helpers/mqtt-watch.ts";

const { values } = parseArgs({
  options: { idle: { type: "string", default: "60" }, runs: { type: "string", default: "5" } },
});
const IDLE_SECONDS = Number(values.idle);
const RUNS = Number(values.runs);
const BIN = join(ROOT, "dist", "outpost-linux-x64");
const NODE = process.execPath;
const MiB = 1024 * 1024;
const TICKS = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim());

interface Row {
  metric: string;
  outpost: number;
  bare?: number;
  unit: string;
  note?: string;
}
const rows: Row[] = [];

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] ?? 0) : ((s[mid - 1] ?? 0) + (s[mid] ?? 0)) / 2;
}

function rssMiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? Number.NaN);
  return kb / 1024;
}

function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after the ")" of the command name; utime and stime are fields 14 and 15 of the whole line.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICKS;
}

function sizes(): void {
  const xz = (path: string) =>
    Number(execFileSync("sh", ["-c", `xz -T2 -6 -c '${path}' | wc -c`], { encoding: "utf8" }).trim());
  for (const arch of ["x64", "arm64"]) {
    const bin = join(ROOT, "dist", `outpost-linux-${arch}`);
    const shipped = statSync(bin).size;
    const runtime = join(ROOT, ".cache", "runtime", `node-linux-${arch}-24.21.0`, "bin", "node");
    const stripped = join(
      ROOT,
      ".cache",
      "pkg-home",
      ".pkg-cache",
      "sea",
      `node-v24.21.0-linux-${arch}`,
      "bin",
      "node",
    );
    const raw = shipped + statSync(runtime).size - statSync(stripped).size;
    rows.push({
      metric: `binary size linux-${arch}, unstripped base`,
      outpost: raw / MiB,
      bare: statSync(runtime).size / MiB,
      unit: "MiB",
      note: "bare = the official node binary",
    });
    rows.push({
      metric: `binary size linux-${arch}, as shipped (stripped)`,
      outpost: shipped / MiB,
      bare: statSync(stripped).size / MiB,
      unit: "MiB",
      note: "bare = stripped node",
    });
    rows.push({
      metric: `binary size linux-${arch}, xz -6`,
      outpost: xz(bin) / MiB,
      bare: xz(stripped) / MiB,
      unit: "MiB",
    });
  }
}

async function startup(broker: Mosquitto, watch: Watch): Promise<void> {
  const toTelemetry: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const id = `bench-start-${i}`;
    const started = performance.now();
    const agent = AgentProcess.run([BIN], {
      device: { id },
      mqtt: { url: broker.url },
      telemetry: { interval: "10s" },
    });
    await watch.waitFor((m) => m.topic === `outpost/v1/${id}/telemetry`, 30_000, "first telemetry");
    toTelemetry.push(performance.now() - started);
    await agent.stop("SIGTERM");
    await agent.cleanup();
  }
  const bare: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const started = performance.now();
    execFileSync(NODE, ["-e", "console.log(1)"]);
    bare.push(performance.now() - started);
  }
  rows.push({
    metric: "start to first telemetry on the broker (median)",
    outpost: median(toTelemetry),
    bare: median(bare),
    unit: "ms",
    note: `bare = node -e "console.log(1)" to exit; ${RUNS} runs`,
  });
}

async function idle(broker: Mosquitto, watch: Watch): Promise<void> {
  const id = "bench-idle";
  const agent = AgentProcess.run([BIN], { device: { id }, mqtt: { url: broker.url }, telemetry: { interval: "1s" } });
  const bare = spawn(NODE, ["-e", "setInterval(() => {}, 1000)"], { stdio: "ignore" });
  const plain = AgentProcess.run([NODE, "/tmp/outpost-build/outpost.cjs"], {
    device: { id: "bench-plain" },
    mqtt: { url: broker.url },
    telemetry: { interval: "1s" },
  });
  try {
    await watch.waitFor((m) => m.topic === `outpost/v1/${id}/telemetry`, 30_000, "first telemetry");
    const pid = agent.child.pid ?? 0;
    const barePid = bare.pid ?? 0;
    const cpu0 = cpuSeconds(pid);
    const bareCpu0 = cpuSeconds(barePid);
    const count0 = watch.telemetry().filter((m) => m.topic.includes(id)).length;
    await new Promise((resolve) => setTimeout(resolve, IDLE_SECONDS * 1000));
    const cycles = watch.telemetry().filter((m) => m.topic.includes(id)).length - count0;
    rows.push({
      metric: `idle RSS after ${IDLE_SECONDS} s, 1 s telemetry`,
      outpost: rssMiB(pid),
      bare: rssMiB(barePid),
      unit: "MiB",
      note: "bare = node -e setInterval 1 s",
    });
    rows.push({
      metric: "same, the same bundle on plain node (no SEA)",
      outpost: rssMiB(plain.child.pid ?? 0),
      bare: rssMiB(barePid),
      unit: "MiB",
      note: "the single-executable wrapper's share of the RSS",
    });
    const per100 = ((cpuSeconds(pid) - cpu0) / cycles) * 100;
    const barePer100 = ((cpuSeconds(barePid) - bareCpu0) / cycles) * 100;
    rows.push({
      metric: "CPU per 100 telemetry cycles",
      outpost: per100,
      bare: barePer100,
      unit: "s",
      note: `${cycles} cycles measured; bare = same wall time idle`,
    });
  } finally {
    bare.kill("SIGKILL");
    await plain.cleanup();
    await agent.stop("SIGTERM");
    await agent.cleanup();
  }
}

function print(): void {
  const header = ["metric", "outpost", "bare node", "ratio", "unit", "note"];
  const table = rows.map((r) => [
    r.metric,
    r.outpost.toFixed(r.unit === "s" ? 3 : 1),
    r.bare === undefined ? "-" : r.bare.toFixed(r.unit === "s" ? 3 : 1),
    r.bare ? `${(r.outpost / r.bare).toFixed(2)}x` : "-",
    r.unit,
    r.note ?? "",
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...table.map((row) => (row[i] ?? "").length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(" | ");
  process.stdout.write(`${line(header)}\n${widths.map((w) => "-".repeat(w)).join("-|-")}\n`);
  for (const row of table) process.stdout.write(`${line(row)}\n`);
}

async function main(): Promise<void> {
  const broker = await Mosquitto.start();
  const watch = await Watch.open(broker.port, ["outpost/v1/#"]);
  const scratch = mkdtempSync(join(tmpdir(), "outpost-bench-"));
  try {
    sizes();
    await startup(broker, watch);
    await idle(broker, watch);
  } finally {
    await watch.close();
    await broker.stop();
    rmSync(scratch, { recursive: true, force: true });
  }
  print();
  mkdirSync(join(ROOT, "bench"), { recursive: true });
  const out = {
    date: new Date().toISOString(),
    machine: { cpus: (await import("node:os")).cpus().length, node: process.version, arch: process.arch },
    rows,
  };
  writeFileSync(join(ROOT, "bench", "results.json"), `${JSON.stringify(out, null, 2)}\n`);
  process.stdout.write("wrote bench/results.json\n");
}

await main();
