// npm run soak -- --minutes N: the built agent under load for N minutes, against mosquitto restarted every
// --restart-every minutes, with telemetry every 100 ms (deadbands on, full samples every 5 s), /metrics scraped
// every second, Home Assistant discovery on, and signed commands at --rate per second. Prints RSS,
// heap and handles (the agent's own resources collector) after a warm-up and at the end, and writes
// bench/soak.json. Growth is the end minus the warm sample; the goal is under 3 MiB of RSS over an hour.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { mergeReport } from "../src/core/merge.ts";
import { AgentProcess, ROOT } from "../test/helpers/agent-process.ts";
import { operatorKey } from "../test/helpers/commands.ts";
import { processMemory } from "../test/helpers/memory.ts";
import { Mosquitto } from "../test/helpers/mosquitto.ts";
import { Watch } from "../test/helpers/mqtt-watch.ts";
import { Operator } from "../test/helpers/operator.ts";
import { freePort } from "../test/helpers/ports.ts";

const { values } = parseArgs({
  options: {
    minutes: { type: "string", default: "10" },
    warmup: { type: "string", default: "30" },
    rate: { type: "string", default: "5" },
    "restart-every": { type: "string", default: "2" },
    bin: { type: "string" },
  },
});
const MINUTES = Number(values.minutes);
const WARMUP = Math.min(Number(values.warmup), MINUTES / 2);
const RATE = Number(values.rate);
const RESTART_EVERY = Number(values["restart-every"]);
const BIN = values.bin ?? join(ROOT, "dist", "outpost-linux-x64");
const ID = "soak";

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
    telemetry: { interval: "100ms", fullInterval: "5s" },
    resources: { interval: "5s" },
    http: { listen: `127.0.0.1:${httpPort}` },
    homeassistant: { discovery: true },
    commands: { trustedKeys: [{ name: "ops", key: key.publicText, allow: ["*"] }] },
    log: { level: "warn" },
  });
  let operator = await Operator.open(broker.port, key);
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
        .call(ID, commands % 2 ? "ping" : "describe", undefined, { timeoutMs: 5000 })
        .then((r) => (r.finals.length ? undefined : failures++))
        .catch(() => failures++);
      commands += 1;
      await Promise.race([call, sleep(1000 / RATE)]);
      await sleep(Math.max(0, 1000 / RATE - (performance.now() - t)));
    }
  })();

  // Prometheus's part: a scrape a second, whatever the broker is doing.
  let scrapes = 0;
  const scraper = (async () => {
    while (!stopping) {
      await fetch(`http://127.0.0.1:${httpPort}/metrics`)
        .then((r) => r.text())
        .then(() => scrapes++)
        .catch(() => {});
      await sleep(1000);
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
      }
      if (minute() >= nextRestart) {
        nextRestart += RESTART_EVERY;
        await broker.halt();
        await sleep(3000);
        await broker.resume();
        await operator.close().catch(() => {});
        operator = await Operator.open(broker.port, key);
      }
      if (Math.floor(minute()) !== Math.floor(readings.at(-1)?.minute ?? -1)) readings.push(read());
    }
    const end = read();
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
    mkdirSync(join(ROOT, "bench"), { recursive: true });
    writeFileSync(
      join(ROOT, "bench", "soak.json"),
      `${JSON.stringify({ date: new Date().toISOString(), minutes: MINUTES, rate: RATE, warm, end, growth, failures, readings }, null, 2)}\n`,
    );
  } finally {
    stopping = true;
    await agent.stop("SIGTERM").catch(() => {});
    await agent.cleanup();
    await operator.close().catch(() => {});
    await watch.close();
    await broker.stop();
  }
}

await main();
