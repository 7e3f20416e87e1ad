// npm run bench: prints a table and writes bench/results.json. Every figure for the agent is measured in the
// same run as the same figure for a bare Node process, so the agent's overhead reads as a ratio.

import { execFile, execFileSync, spawn } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import {
  chmodSync,
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs, promisify } from "node:util";
import mqtt from "mqtt";
import { pino } from "pino";
import { AnswerTrust } from "../src/cli/answer-trust.ts";
import { DeviceCaller } from "../src/cli/ctl-client.ts";
import { brokerId, KnownDevices } from "../src/cli/known-devices.ts";
import { checkAnswer, signAnswer } from "../src/commands/answers.ts";
import { verifyEnvelope } from "../src/commands/envelope.ts";
import { parsePublicKey } from "../src/commands/keys.ts";
import { systemClock } from "../src/core/clock.ts";
import { answerSigner } from "../src/kernel/status.ts";
import type { MqttLink } from "../src/mqtt/link.ts";
import { deviceTopics } from "../src/mqtt/topics.ts";
import { Outbox } from "../src/outbox/outbox.ts";
import type { OutboxOptions } from "../src/outbox/types.ts";
import { AgentProcess, ROOT } from "../test/helpers/agent-process.ts";
import { harness, request, sign } from "../test/helpers/commands.ts";
import { testLink } from "../test/helpers/link.ts";
import { processMemory } from "../test/helpers/memory.ts";
import { Mosquitto } from "../test/helpers/mosquitto.ts";
import { Watch } from "../test/helpers/mqtt-watch.ts";
import { Operator } from "../test/helpers/operator.ts";
import { boardRows } from "./bench-board.ts";
import { BUDGET_SECTIONS, budgetTable } from "./bench-budget.ts";
import { deltaRows } from "./bench-delta.ts";
import { diagRows } from "./bench-diag.ts";
import { meteredRows } from "./bench-metered.ts";
import { modelRows } from "./bench-models.ts";
import { otaRows } from "./bench-ota.ts";
import { poolRows } from "./bench-pool.ts";
import { rolloutRows } from "./bench-rollout.ts";
import { stagingRows } from "./bench-staging.ts";
import { taskRows } from "./bench-tasks.ts";

const { values } = parseArgs({
  options: {
    idle: { type: "string", default: "60" },
    runs: { type: "string", default: "5" },
    backlog: { type: "string", default: "100000" },
    drains: { type: "string", default: "5" },
    only: {
      type: "string",
      default:
        "sizes,startup,footprint,idle,notify,outbox,commands,board,pool,tasks,models,delta,ota,staging,metered,rollout,diag",
    },
    // The earlier commit an app-only update comes from (the delta section).
    "delta-from": { type: "string", default: "HEAD~4" },
    // Another build of the agent to measure (e.g. one made with build.ts --exec-argv=...).
    bin: { type: "string" },
    calls: { type: "string", default: "1000" },
    // The simulated fleet (rollout section): its size, and the crash test's devices and kills.
    fleet: { type: "string", default: "1000" },
    "crash-devices": { type: "string", default: "200" },
    kills: { type: "string", default: "10" },
  },
});
const IDLE_SECONDS = Number(values.idle);
const RUNS = Number(values.runs);
const BACKLOG = Number(values.backlog);
const DRAINS = Number(values.drains);
const ONLY = new Set(values.only.split(","));
// The small-device budget (issue 27): the sections it draws on, then its table.
if (ONLY.has("budget")) for (const section of BUDGET_SECTIONS) ONLY.add(section);
const CALLS = Number(values.calls);
const WINDOW = 20; // mosquitto's default receive maximum, which the outbox honours
const BIN = values.bin ?? join(ROOT, "dist", "outpost-linux-x64");
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

/**
 * Idle memory of the shipped binary at the default 10 s telemetry, and of a bare Node idling, each measured
 * alone (two processes mapping one file would halve each other's PSS).
 */
async function footprint(broker: Mosquitto, watch: Watch): Promise<void> {
  const id = "bench-footprint";
  // As after a reboot: a file just written or copied sits whole in the page cache, and then every page fault
  // maps its cached neighbours too (fault-around), about 16 MiB more RSS than the same binary read cold.
  const cold = (file: string) => execFileSync("dd", [`if=${file}`, "iflag=nocache", "count=0", "status=none"]);
  cold(BIN);
  const agent = AgentProcess.run([BIN], { device: { id }, mqtt: { url: broker.url }, telemetry: { interval: "10s" } });
  let mine: ReturnType<typeof processMemory>;
  try {
    await watch.waitFor((m) => m.topic === `outpost/v1/${id}/telemetry`, 30_000, "first telemetry");
    await new Promise((resolve) => setTimeout(resolve, IDLE_SECONDS * 1000));
    mine = processMemory(agent.child.pid ?? 0);
  } finally {
    await agent.stop("SIGTERM");
    await agent.cleanup();
  }
  // A copy of node: the bench itself runs on the same file, whose pages would otherwise count half.
  const dir = mkdtempSync(join(tmpdir(), "outpost-bench-node-"));
  const node = join(dir, "node");
  copyFileSync(NODE, node);
  chmodSync(node, 0o755);
  cold(node);
  const bare = spawn(node, ["-e", "setInterval(() => {}, 10000)"], { stdio: "ignore" });
  let theirs: ReturnType<typeof processMemory>;
  try {
    await new Promise((resolve) => setTimeout(resolve, IDLE_SECONDS * 1000));
    theirs = processMemory(bare.pid ?? 0);
  } finally {
    bare.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
  const note = `after ${IDLE_SECONDS} s, 10 s telemetry, each alone, binaries cold; bare = node -e setInterval`;
  rows.push({ metric: "idle RSS", outpost: mine.rss, bare: theirs.rss, unit: "MiB", note });
  rows.push({ metric: "idle PSS", outpost: mine.pss, bare: theirs.pss, unit: "MiB", note: "proportional set size" });
  rows.push({ metric: "  of which anonymous", outpost: mine.anon, bare: theirs.anon, unit: "MiB" });
  rows.push({ metric: "  of which file-backed", outpost: mine.file, bare: theirs.file, unit: "MiB" });
}

async function idle(broker: Mosquitto, watch: Watch): Promise<void> {
  const id = "bench-idle";
  const agent = AgentProcess.run([BIN], { device: { id }, mqtt: { url: broker.url }, telemetry: { interval: "1s" } });
  const bare = spawn(NODE, ["-e", "setInterval(() => {}, 1000)"], { stdio: "ignore" });
  try {
    await watch.waitFor((m) => m.topic === `outpost/v1/${id}/telemetry`, 30_000, "first telemetry");
    const pid = agent.child.pid ?? 0;
    const barePid = bare.pid ?? 0;
    const cpu0 = cpuSeconds(pid);
    const bareCpu0 = cpuSeconds(barePid);
    const count0 = watch.telemetry().filter((m) => m.topic.includes(id)).length;
    await new Promise((resolve) => setTimeout(resolve, IDLE_SECONDS * 1000));
    const cycles = watch.telemetry().filter((m) => m.topic.includes(id)).length - count0;
    const per100 = ((cpuSeconds(pid) - cpu0) / cycles) * 100;
    const barePer100 = ((cpuSeconds(barePid) - bareCpu0) / cycles) * 100;
    rows.push({
      metric: "CPU per 100 telemetry cycles (1 s)",
      outpost: per100,
      bare: barePer100,
      unit: "s",
      note: `${cycles} cycles measured; bare = same wall time idle`,
    });
  } finally {
    bare.kill("SIGKILL");
    await agent.stop("SIGTERM");
    await agent.cleanup();
  }
}

/** Cost of one sd_notify datagram: through the addon (build/native) on the pinned Node, and by spawning systemd-notify. */
async function notifyRows(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "outpost-bench-notify-"));
  const socket = join(dir, "notify.sock");
  const receiver = spawn("python3", [join(ROOT, "test", "fixtures", "notify-receiver.py"), socket], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  try {
    await new Promise<void>((resolve) => receiver.stdout.once("data", () => resolve()));
    // Keep reading what it prints: a full pipe would stop it, and then the socket.
    receiver.stdout.resume();
    const script = `
      const m = { exports: {} };
      process.dlopen(m, process.argv[2]);
      const n = 20000;
      const t = process.hrtime.bigint();
      for (let i = 0; i < n; i++) m.exports.notify(process.argv[1], "WATCHDOG=1");
      console.log(Number(process.hrtime.bigint() - t) / n / 1000);`;
    const addon = join(dir, "sd-notify.node");
    execFileSync(process.env.CC ?? "gcc", [
      "-O2",
      "-fPIC",
      "-shared",
      "-o",
      addon,
      join(ROOT, "build", "native", "sd-notify.c"),
    ]);
    // Asynchronous from here: this process must go on reading the receiver's output while the senders run.
    const run = promisify(execFile);
    const addonUs = Number((await run(NODE, ["-e", script, socket, addon])).stdout.trim());
    const n = 50;
    const t = performance.now();
    for (let i = 0; i < n; i++) await run("systemd-notify", ["WATCHDOG=1"], { env: { NOTIFY_SOCKET: socket } });
    const spawnMs = (performance.now() - t) / n;
    rows.push({ metric: "sd_notify ping, addon", outpost: addonUs, unit: "µs", note: "20,000 datagrams, one process" });
    rows.push({
      metric: "sd_notify ping, systemd-notify spawn",
      outpost: spawnMs * 1000,
      unit: "µs",
      note: "the fallback, 50 spawns",
    });
  } finally {
    receiver.kill();
    rmSync(dir, { recursive: true, force: true });
  }
}

const body = (i: number) => ({ metrics: { cpu: { load: 12.5, cores: [10, 15] }, i } });

/** CPU time of this process (user + system) in µs. */
const cpuUs = () => {
  const { user, system } = process.cpuUsage();
  return user + system;
};

/** The bare MQTT.js baseline: QoS 1 publishes with a sliding window of WINDOW in flight. */
async function bareDrain(port: number, payloads: string[], cpu: number[]): Promise<number> {
  const client = await mqtt.connectAsync({ host: "127.0.0.1", port, protocolVersion: 5, clientId: "bench-bare" });
  (client.stream as { setNoDelay?: (v: boolean) => void }).setNoDelay?.(true);
  const started = performance.now();
  const cpu0 = cpuUs();
  await new Promise<void>((resolve, reject) => {
    let next = 0;
    let done = 0;
    let inflight = 0;
    const launch = () => {
      while (inflight < WINDOW && next < payloads.length) {
        inflight += 1;
        const payload = payloads[next++] ?? "";
        client.publishAsync("bench/bare", payload, { qos: 1 }).then(() => {
          inflight -= 1;
          done += 1;
          if (done === payloads.length) resolve();
          else launch();
        }, reject);
      }
    };
    launch();
  });
  const ms = performance.now() - started;
  cpu.push((cpuUs() - cpu0) / payloads.length);
  await client.endAsync();
  return ms;
}

/** An outbox with the defaults and silent logs, as each outbox row needs one. */
function quietOutbox(
  transport: MqttLink,
  session: string,
  dir: string,
  window?: number,
  sign?: OutboxOptions["sign"],
): Outbox {
  const logger = pino({ level: "silent" });
  const options = { transport, clock: systemClock, session, clockSynced: () => true, logger, dir, sign };
  return new Outbox(window === undefined ? options : { ...options, window });
}

/** The device's signing of telemetry with `telemetry.sign` on (kernel/status.ts), with a key of its own. */
const signedTelemetry = answerSigner(
  generateKeyPairSync("ed25519").privateKey,
  "bench",
  deviceTopics("bench", "bench"),
  "bench",
).outbox(() => true);

/** Drains the backlog stored in `dir`; returns ms, and the CPU per message in `cpu`. */
async function drainOnce(port: number, dir: string, cpu: number[], sign?: OutboxOptions["sign"]): Promise<number> {
  const online = testLink(port, 5, "bench-outbox");
  const drain = quietOutbox(online, "bench-drain", dir, WINDOW, sign);
  await drain.start(new AbortController().signal);
  if (drain.stats().queued !== BACKLOG) throw new Error(`backlog of ${drain.stats().queued}, not ${BACKLOG}`);
  const d0 = performance.now();
  const c0 = cpuUs();
  await online.start(new AbortController().signal);
  await drain.flush(AbortSignal.timeout(600_000));
  const ms = performance.now() - d0;
  cpu.push((cpuUs() - c0) / BACKLOG);
  await online.stop();
  await drain.stop();
  return ms;
}

async function outboxRows(broker: Mosquitto): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "outpost-bench-outbox-"));
  try {
    // Durable write cost: messages produced while offline, then one commit, as the commit loop does.
    const transport = testLink(broker.port + 1, 5, "bench-offline"); // nothing listens there: offline
    const outbox = quietOutbox(transport, "bench", dir);
    await outbox.start(new AbortController().signal);
    const started = performance.now();
    for (let i = 0; i < BACKLOG; i++) outbox.send({ topic: "bench/outbox", priority: "telemetry", body: body(i) });
    outbox.commit();
    const writeUs = ((performance.now() - started) * 1000) / BACKLOG;
    rows.push({
      metric: "durable write cost per message (send + batched commit)",
      outpost: writeUs,
      unit: "µs",
      note: `${BACKLOG} messages, one transaction`,
    });
    await outbox.stop();

    // fsyncs at default settings while backlogged: one commit per second at most.
    const live = quietOutbox(transport, "bench-live", join(dir, "live"));
    await live.start(new AbortController().signal);
    const t0 = performance.now();
    while (performance.now() - t0 < 5000) {
      for (let i = 0; i < 10; i++) live.send({ topic: "bench/outbox", priority: "telemetry", body: body(i) });
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const fsyncRate = live.stats().fsyncs / ((performance.now() - t0) / 1000);
    rows.push({
      metric: "fsyncs per second, offline at 1,000 msg/s, default commit",
      outpost: fsyncRate,
      unit: "1/s",
      note: "commitInterval 1s",
    });
    await live.stop();

    // Drain: the stored backlog against the bare loop with the same window and payloads, in DRAINS interleaved
    // pairs (loopback throughput swings by 15 % from run to run); the medians are reported.
    const payloads = Array.from({ length: BACKLOG }, (_, i) =>
      JSON.stringify({ session: "bare", seq: i + 1, ts: Date.now(), mono: i, clockSynced: true, ...body(i) }),
    );
    const bareMs: number[] = [];
    const drainMs: number[] = [];
    const bareCpu: number[] = [];
    const drainCpu: number[] = [];
    const signedMs: number[] = [];
    const signedCpu: number[] = [];
    for (let run = 0; run < DRAINS; run++) {
      const backlog = async (name: string) => {
        const at = join(dir, `${name}-${run}`);
        const writer = quietOutbox(transport, `bench-${name}-${run}`, at);
        await writer.start(new AbortController().signal);
        for (let i = 0; i < BACKLOG; i++) writer.send({ topic: "bench/outbox", priority: "telemetry", body: body(i) });
        await writer.stop();
        return at;
      };
      const plainDir = await backlog("drain");
      const signedDir = await backlog("signed");
      bareMs.push(await bareDrain(broker.port, payloads, bareCpu));
      drainMs.push(await drainOnce(broker.port, plainDir, drainCpu));
      signedMs.push(await drainOnce(broker.port, signedDir, signedCpu, signedTelemetry));
    }
    const ratios = drainMs.map((ms, i) => (bareMs[i] ?? 0) / ms);
    rows.push({
      metric: "backlog drain rate against mosquitto",
      outpost: BACKLOG / (median(drainMs) / 1000),
      bare: BACKLOG / (median(bareMs) / 1000),
      unit: "msg/s",
      note: `window ${WINDOW}; median of ${DRAINS} pairs (ratios ${ratios.map((r) => r.toFixed(2)).join(" ")}); target >= 0.80x`,
    });
    rows.push({
      metric: "CPU of this process per drained message",
      outpost: median(drainCpu),
      bare: median(bareCpu),
      unit: "µs",
      note: `median of ${DRAINS}; outbox ${drainCpu.map((c) => c.toFixed(1)).join(" ")}`,
    });
    rows.push({
      metric: "backlog drain rate with telemetry.sign on",
      outpost: BACKLOG / (median(signedMs) / 1000),
      bare: BACKLOG / (median(drainMs) / 1000),
      unit: "msg/s",
      note: `"bare" here is the same drain unsigned; CPU per message ${median(signedCpu).toFixed(1)} µs signed, ${median(drainCpu).toFixed(1)} unsigned`,
    });
    rows.push({
      metric: `time to drain ${BACKLOG} backlogged messages`,
      outpost: median(drainMs) / 1000,
      bare: median(bareMs) / 1000,
      unit: "s",
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? Number.NaN;
}

/** A bare MQTT.js responder: each request echoed on its response topic, unsigned; "ready" once subscribed. */
const ECHO = `
import mqtt from "mqtt";
const echo = await mqtt.connectAsync({ host: "127.0.0.1", port: Number(process.argv[1]), protocolVersion: 5 });
echo.stream.setNoDelay?.(true);
echo.on("message", (_topic, payload, packet) => {
  const p = packet.properties;
  if (!p?.responseTopic) return;
  const id = JSON.parse(JSON.parse(payload.toString()).payload).id;
  const body = JSON.stringify({ id, device: "bench-echo", command: "ping", state: "succeeded", result: { pong: true } });
  echo.publish(p.responseTopic, body, { qos: 1, properties: { correlationData: p.correlationData } });
});
await echo.subscribeAsync("outpost/v1/bench-echo/cmd/+", { qos: 1 });
process.stdout.write("ready\\n");
`;

/**
 * Command round trip through mosquitto: the built agent answering signed pings from an in-process operator,
 * against a bare MQTT.js responder that echoes each request on its response topic (no signature, no outbox,
 * no replay record). Then the device-side cost per command, in-process.
 */
async function commandRows(broker: Mosquitto, watch: Watch): Promise<void> {
  const operator = await Operator.open(broker.port);
  const agent = AgentProcess.run([BIN], {
    device: { id: "bench-cmd" },
    mqtt: { url: `mqtt://127.0.0.1:${broker.port}` },
    telemetry: { interval: "10s" },
    log: { level: "warn" },
    commands: { trustedKeys: [{ name: "bench", key: operator.key.publicText, allow: ["*"] }] },
  });
  // The bare echo runs in a process of its own, as the agent does: three processes (caller, broker, answerer)
  // share this machine's cores in both rows. In the caller's process, it measured a round trip with one hop less.
  const echo = spawn(process.execPath, ["--input-type=module", "-e", ECHO, String(broker.port)], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "inherit"],
  });
  try {
    await watch.waitFor(
      (m) => m.topic === "outpost/v1/bench-cmd/status" && m.json.state === "online",
      20_000,
      "online",
    );
    // As ctl calls: the device's key pinned, every reply checked (answer-trust.ts). The echo cannot sign.
    const pins = KnownDevices.none();
    const url = `mqtt://127.0.0.1:${broker.port}`;
    const pub = readFileSync(join(agent.dir, "state", "device.pub"), "utf8").trim();
    pins.pin({ broker: brokerId(url), prefix: "outpost/v1", device: "bench-cmd", key: pub });
    const trust = new AnswerTrust({ pins, broker: url, prefix: "outpost/v1", acceptNew: false });
    const checked = new DeviceCaller(operator.client, "outpost/v1", operator.key, trust);
    // One call at a time; the first 50 warm up.
    const pings = async (device: string, command = "ping", params?: (i: number) => unknown) => {
      const ms: number[] = [];
      for (let i = 0; i < CALLS + 50; i++) {
        const t0 = performance.now();
        const result =
          device === "bench-cmd"
            ? await checked.call({ device, command, params: params?.(i), timeoutMs: 10_000, validityMs: 60_000 })
            : await operator.call(device, command);
        if (result.finals[0]?.state !== "succeeded")
          throw new Error(`${command} ${i} to ${device} failed: ${JSON.stringify(result.finals[0] ?? result)}`);
        if (i >= 50) ms.push(performance.now() - t0);
      }
      return ms;
    };
    const agentMs = await pings("bench-cmd");
    await new Promise<void>((resolve, reject) => {
      echo.stdout?.once("data", () => resolve());
      echo.once("exit", (code) => reject(new Error(`the bare echo exited (${code})`)));
    });
    const bareMs = await pings("bench-echo");
    // A change each time (10 s, then 11 s, ...): written to the config file, and its replay record kept on disk.
    const setMs = await pings("bench-cmd", "config.set", (i) => ({
      patch: { telemetry: { interval: `${10 + (i % 2)}s` } },
    }));

    for (const p of [50, 99]) {
      rows.push({
        metric: `command round trip p${p} (ping, ${CALLS} calls)`,
        outpost: percentile(agentMs, p),
        bare: percentile(bareMs, p),
        unit: "ms",
        note: "signed request, signed accepted + succeeded replies via the outbox, checked as ctl does; bare = an MQTT.js echo in its own process",
      });
    }
    for (const p of [50, 99]) {
      rows.push({
        metric: `command round trip p${p} (config.set, ${CALLS} calls)`,
        outpost: percentile(setMs, p),
        bare: percentile(bareMs, p),
        unit: "ms",
        note: "a changed telemetry.interval each call: the config file written, the replay record fsynced",
      });
    }
  } finally {
    echo.kill();
    await agent.cleanup();
    await operator.close();
  }

  const h = harness();
  const envelope = sign(h.ops, request({ command: "probe" }, Date.now()));
  const key = parsePublicKey(h.ops.publicText);
  const n = 5000;
  let t0 = performance.now();
  for (let i = 0; i < n; i++) verifyEnvelope(envelope, key);
  rows.push({
    metric: "ed25519 signature verification",
    outpost: ((performance.now() - t0) * 1000) / n,
    unit: "us/command",
  });

  // Issue 25: what a device pays to sign each answer, and ctl to check one (a ping's succeeded reply).
  const device = generateKeyPairSync("ed25519");
  const topic = "outpost/v1/bench/cmd/ping/reply";
  const reply = JSON.stringify({
    id: "x",
    state: "succeeded",
    result: { pong: true },
    command: "ping",
    device: "bench",
  });
  t0 = performance.now();
  let answer = "";
  for (let i = 0; i < n; i++) answer = signAnswer(device.privateKey, "bench", topic, reply);
  rows.push({ metric: "device answer signing", outpost: ((performance.now() - t0) * 1000) / n, unit: "us/message" });
  t0 = performance.now();
  for (let i = 0; i < n; i++) checkAnswer(device.publicKey, "bench", topic, answer);
  rows.push({
    metric: "device answer check (ctl)",
    outpost: ((performance.now() - t0) * 1000) / n,
    unit: "us/message",
  });

  h.clock.advance(0);
  const signed = Array.from({ length: 1000 }, () =>
    Buffer.from(JSON.stringify(sign(h.ops, request({ command: "probe" }, h.clock.now())))),
  );
  t0 = performance.now();
  for (const payload of signed) h.bus.emit("message", "outpost/v1/dev-1/cmd/probe", payload, {});
  await h.settle();
  rows.push({
    metric: "device-side handling of one signed command",
    outpost: ((performance.now() - t0) * 1000) / signed.length,
    unit: "us/command",
    note: "parse, key lookup, verify, checks, fsynced replay record, run, two replies",
  });
  h.replay.close();
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
    if (ONLY.has("sizes")) sizes();
    if (ONLY.has("startup")) await startup(broker, watch);
    if (ONLY.has("footprint")) await footprint(broker, watch);
    if (ONLY.has("idle")) await idle(broker, watch);
    if (ONLY.has("notify")) await notifyRows();
    if (ONLY.has("outbox")) await outboxRows(broker);
    if (ONLY.has("commands")) await commandRows(broker, watch);
    if (ONLY.has("pool")) await poolRows(rows);
    if (ONLY.has("tasks")) await taskRows(rows, { bin: BIN, broker, watch });
    if (ONLY.has("models")) await modelRows(rows, { bin: BIN, broker });
    if (ONLY.has("delta")) await deltaRows(rows, { appFrom: values["delta-from"] });
    if (ONLY.has("ota")) await otaRows(rows, { bin: BIN, broker, watch, runs: 3, rollbacks: 20 });
    if (ONLY.has("staging")) await stagingRows(rows, { bin: BIN, broker, watch, runs: 3 });
    if (ONLY.has("metered")) await meteredRows(rows, { bin: BIN, broker, watch, seconds: IDLE_SECONDS });
    if (ONLY.has("diag")) await diagRows(rows, { bin: BIN, broker, watch, seconds: IDLE_SECONDS });
    if (ONLY.has("rollout"))
      await rolloutRows(rows, {
        bin: BIN,
        devices: Number(values.fleet),
        crashDevices: Number(values["crash-devices"]),
        kills: Number(values.kills),
        cpuOf: cpuSeconds,
      });
    if (ONLY.has("board")) await boardRows(rows, { bin: BIN, broker, watch, cpuOf: cpuSeconds, seconds: IDLE_SECONDS });
  } finally {
    await watch.close();
    await broker.stop();
    rmSync(scratch, { recursive: true, force: true });
  }
  print();
  if (ONLY.has("budget")) process.stdout.write(`\nthe small-device budget (issue 27)\n${budgetTable(rows)}`);
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
