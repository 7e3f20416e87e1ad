// npm run soak -- --minutes N: the built agent under load for N minutes, against mosquitto restarted every
// --restart-every minutes, with telemetry every --telemetry (100 ms; deadbands on, full samples every 5 s),
// /metrics scraped every --scrape seconds (1), Home Assistant discovery on, and signed commands at --rate per
// second (ping and describe in turn, or --command only). `--mix budget` is issue 27's mix: 1 s telemetry, a
// scrape every 5 s, a signed ping every 10 s, the broker restarted every 6 minutes. Prints RSS, heap and
// handles (the agent's own resources collector) after a warm-up and at the end, and writes bench/soak.json
// with a reading a minute. Growth is the end minus the warm sample; the goal is under 3 MiB of RSS over an hour.
// `--heap-snapshots DIR` writes a heap snapshot of the agent (ctl profile --heap-snapshot) after the warm-up and
// at the end, to compare what grew (Chrome DevTools' comparison view). Writing one costs the agent about 90 MiB
// of memory it keeps, so the memory curve after the first snapshot is not comparable with a run without.
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { mergeReport } from "../src/core/merge.ts";
import { AgentProcess, ROOT } from "../test/helpers/agent-process.ts";
import { runCli } from "../test/helpers/cli.ts";
import { operatorKey } from "../test/helpers/commands.ts";
import { processMemory } from "../test/helpers/memory.ts";
import { Mosquitto } from "../test/helpers/mosquitto.ts";
import { Watch } from "../test/helpers/mqtt-watch.ts";
import { Operator } from "../test/helpers/operator.ts";
import { pinAgent } from "../test/helpers/pins.ts";
import { freePort } from "../test/helpers/ports.ts";
import { tempDir } from "../test/helpers/temp.ts";

const { values } = parseArgs({
  options: {
    minutes: { type: "string", default: "10" },
    warmup: { type: "string", default: "30" },
    rate: { type: "string", default: "5" },
    "restart-every": { type: "string", default: "2" },
    telemetry: { type: "string", default: "100ms" },
    scrape: { type: "string", default: "1" },
    command: { type: "string" },
    mix: { type: "string" },
    bin: { type: "string" },
    out: { type: "string" },
    "heap-snapshots": { type: "string" },
  },
});
const BUDGET_MIX = values.mix === "budget";
if (values.mix !== undefined && !BUDGET_MIX) throw new Error(`--mix ${values.mix}: the only mix is budget`);
const MINUTES = Number(values.minutes);
const WARMUP = Math.min(Number(values.warmup), MINUTES / 2);
const RATE = BUDGET_MIX ? 0.1 : Number(values.rate);
const RESTART_EVERY = BUDGET_MIX ? 6 : Number(values["restart-every"]);
const TELEMETRY = BUDGET_MIX ? "1s" : values.telemetry;
const SCRAPE_S = BUDGET_MIX ? 5 : Number(values.scrape);
const COMMAND = BUDGET_MIX ? "ping" : values.command;
const OUT = values.out ?? join(ROOT, "bench", "soak.json");
const BIN = values.bin ?? join(ROOT, "dist", "outpost-linux-x64");
const ID = "soak";
const SNAPSHOTS = values["heap-snapshots"];

interface Reading {
  minute: number;
  rssMiB: number;
  /** RSS split: a leak grows the anonymous part; file-backed pages grow as more of the binary is touched. */
  anonMiB: number;
  fileMiB: number;
  heapMiB: number;
  handles: number;
  telemetry: number;
  commands: number;
}

const mib = ({ rss, anon, file }: ReturnType<typeof processMemory>) => ({ rssMiB: rss, anonMiB: anon, fileMiB: file });
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function main(): Promise<void> {
  const key = operatorKey();
  const broker = await Mosquitto.start({ extra: ["persistence true"] });
  const httpPort = await freePort();
  const watch = await Watch.open(broker.port, [`outpost/v1/${ID}/telemetry`]);
  const agent = AgentProcess.run([BIN], {
    device: { id: ID },
    mqtt: { url: broker.url, reconnectMin: "100ms", reconnectMax: "1s" },
    telemetry: { interval: TELEMETRY, fullInterval: "5s" },
    resources: { interval: "5s" },
    http: { listen: `127.0.0.1:${httpPort}` },
    homeassistant: { discovery: true },
    commands: { trustedKeys: [{ name: "ops", key: key.publicText, allow: ["*", "debug.heap-snapshot"] }] },
    log: { level: "warn" },
  });
  let operator = await Operator.open(broker.port, key);
  // For ctl: the operator's key as a file, and the device's key pinned once it has written it.
  const ctlDir = tempDir("outpost-soak-ctl-");
  const keyFile = join(ctlDir, "ops.key");
  writeFileSync(keyFile, key.privatePem, { mode: 0o600 });
  const pins = join(ctlDir, "known_devices");
  const snapshot = async (label: string) => {
    if (SNAPSHOTS === undefined) return;
    mkdirSync(SNAPSHOTS, { recursive: true });
    await pinAgent(pins, broker.url, ID, agent);
    const out = join(SNAPSHOTS, `${label}.heapsnapshot`);
    const flags = ["--broker", broker.url, "--key", keyFile, "--known-devices", pins, "--out", out];
    const r = await runCli(["ctl", "profile", ID, "--heap-snapshot", ...flags]);
    process.stdout.write(`snapshot ${label}: ${r.code === 0 ? out : r.err.trim()}\n`);
  };
  const started = performance.now();
  const minute = () => (performance.now() - started) / 60_000;
  let commands = 0;
  let failures = 0;
  let stopping = false;
  const readings: Reading[] = [];

  // Signed commands at RATE per second, answered or not (the broker may be down).
  const caller = (async () => {
    while (!stopping) {
      const t = performance.now();
      const call = operator
        .call(ID, COMMAND ?? (commands % 2 ? "ping" : "describe"), undefined, { timeoutMs: 5000 })
        .then((r) => (r.finals.length ? undefined : failures++))
        .catch(() => failures++);
      commands += 1;
      await Promise.race([call, sleep(1000 / RATE)]);
      await sleep(Math.max(0, 1000 / RATE - (performance.now() - t)));
    }
  })();

  // Prometheus's part: a scrape every SCRAPE_S seconds, whatever the broker is doing.
  let scrapes = 0;
  const scraper = (async () => {
    while (!stopping) {
      await fetch(`http://127.0.0.1:${httpPort}/metrics`)
        .then((r) => r.text())
        .then(() => scrapes++)
        .catch(() => {});
      await sleep(SCRAPE_S * 1000);
    }
  })();

  // Telemetry between full samples carries only what moved: the reading merges, as a consumer does.
  let merged: ReturnType<typeof mergeReport> | undefined;
  let mergedUpTo = 0;
  const read = (): Reading => {
    const all = watch.telemetry();
    for (const m of all.slice(mergedUpTo)) merged = mergeReport(merged, m.json);
    mergedUpTo = all.length;
    const resources = merged?.metrics.resources as { heapUsed: number; handles: number } | undefined;
    return {
      minute: Math.round(minute() * 10) / 10,
      ...mib(processMemory(agent.child.pid ?? 0)),
      heapMiB: (resources?.heapUsed ?? Number.NaN) / 1024 / 1024,
      handles: resources?.handles ?? Number.NaN,
      telemetry: watch.telemetry().length,
      commands,
    };
  };

  let nextRestart = RESTART_EVERY;
  let warm: Reading | undefined;
  try {
    while (minute() < MINUTES) {
      await sleep(5000);
      if (!warm && minute() >= WARMUP) {
        warm = read();
        process.stdout.write(`warm  ${JSON.stringify(warm)}\n`);
        await snapshot("warm");
      }
      if (minute() >= nextRestart) {
        nextRestart += RESTART_EVERY;
        await broker.halt();
        await sleep(3000);
        await broker.resume();
        await operator.close().catch(() => {});
        operator = await Operator.open(broker.port, key);
      }
      if (Math.floor(minute()) !== Math.floor(readings.at(-1)?.minute ?? -1)) {
        const r = read();
        readings.push(r);
        // A line a minute: a long soak that dies still leaves its curve.
        process.stdout.write(`minute ${JSON.stringify(r)}\n`);
      }
    }
    const end = read();
    await snapshot("end");
    stopping = true;
    await caller;
    await scraper;
    const growth = warm
      ? {
          rssMiB: end.rssMiB - warm.rssMiB,
          anonMiB: end.anonMiB - warm.anonMiB,
          heapMiB: end.heapMiB - warm.heapMiB,
          handles: end.handles - warm.handles,
        }
      : undefined;
    process.stdout.write(
      `end   ${JSON.stringify(end)}\ngrowth ${JSON.stringify(growth)} (commands unanswered: ${failures}, scrapes: ${scrapes})\n`,
    );
    mkdirSync(dirname(OUT), { recursive: true });
    const mix = { telemetry: TELEMETRY, scrapeS: SCRAPE_S, rate: RATE, command: COMMAND, restartEvery: RESTART_EVERY };
    writeFileSync(
      OUT,
      `${JSON.stringify({ date: new Date().toISOString(), minutes: MINUTES, mix, warm, end, growth, failures, readings }, null, 2)}\n`,
    );
  } finally {
    stopping = true;
    await agent.stop("SIGTERM").catch(() => {});
    await agent.cleanup();
    await operator.close().catch(() => {});
    await watch.close();
    await broker.stop();
    rmSync(ctlDir, { recursive: true, force: true });
  }
}

await main();
