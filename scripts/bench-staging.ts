// Issue 27, item 3: the agent's memory while it stages a full-binary release (an app-only change, so almost
// every chunk comes from the binary it runs) over MQTT with `ctl update --until staged`, sampled every 20 ms
// from /proc/PID/smaps_rollup. Before chunkFile the running binary was read whole, and copied once more.
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import mqtt from "mqtt";
import { generateKeys, parsePrivateKey } from "../src/commands/keys.ts";
import { errorMessage } from "../src/core/errors.ts";
import { makeRelease, RELEASE_ZSTD_LEVEL } from "../src/ota/release.ts";
import { AgentProcess, ROOT, sourceCommand } from "../test/helpers/agent-process.ts";
import { runCli } from "../test/helpers/cli.ts";
import { operatorKey } from "../test/helpers/commands.ts";
import { processMemory } from "../test/helpers/memory.ts";
import type { Mosquitto } from "../test/helpers/mosquitto.ts";
import type { Watch } from "../test/helpers/mqtt-watch.ts";
import { pinAgent } from "../test/helpers/pins.ts";
import { RangeServer } from "../test/helpers/range-server.ts";
import { buildVersion } from "../test/helpers/releases.ts";
import type { BenchRow } from "./bench-board.ts";
import { buildAt, OTHER_NODE } from "./bench-delta.ts";

const DEVICE = "bench-staging";

/** What `update/data` carried for DEVICE while `during` ran: bytes on the wire, and the range bytes they held. */
async function wire(o: { broker: Mosquitto }, during: () => Promise<void>): Promise<{ wire: number; raw: number }> {
  const spy = await mqtt.connectAsync({ host: "127.0.0.1", port: o.broker.port, protocolVersion: 5 });
  let bytes = 0;
  let raw = 0;
  spy.on("message", (_topic, payload) => {
    bytes += payload.length;
    const end = payload.indexOf(0x0a);
    raw += Number((JSON.parse(payload.subarray(0, end).toString()) as { size?: number }).size ?? 0);
  });
  await spy.subscribeAsync(`outpost/v1/${DEVICE}/update/data`, { qos: 1 });
  try {
    await during();
  } finally {
    await spy.endAsync();
  }
  return { wire: bytes, raw };
}

export async function stagingRows(rows: BenchRow[], o: { bin: string; broker: Mosquitto; watch: Watch; runs: number }) {
  mkdirSync(join(ROOT, ".cache"), { recursive: true });
  const dir = mkdtempSync(join(ROOT, ".cache", "bench-staging-"));
  const key = generateKeys();
  const ops = operatorKey();
  try {
    const built = buildVersion(join(dir, "v2-build"), "9.1.0");
    const release = makeRelease({
      file: built,
      privateKey: parsePrivateKey(key.privatePem),
      out: join(dir, "v2"),
      kind: "agent",
      now: 1,
      // What `outpost release` makes: the HTTP rows count its chunk files.
      zstdLevel: RELEASE_ZSTD_LEVEL,
    });
    rmSync(join(dir, "v2-build"), { recursive: true, force: true });
    writeFileSync(join(dir, "ops.key"), ops.privatePem, { mode: 0o600 });
    const pins = join(dir, "known_devices");
    const idle: number[] = [];
    const peaks: number[] = [];
    const rssPeaks: number[] = [];
    /** Bytes on the wire by case: `update/data` over MQTT, response bodies over HTTP (raw: the chunks' bytes). */
    const carriedBy = new Map<string, { wire: number; raw: number }>();
    // This checkout's last commit built on the other Node runtime (the delta section's; it fetches that runtime
    // from the npm registry): sent this release, a device running it gets a runtime change. Should that build
    // fail, the rows say so and the other figures stand.
    const otherNode = join(dir, "outpost-other-node");
    let runtimeNote = `the last commit built on Node ${OTHER_NODE.version} stages this checkout built on the pinned Node`;
    try {
      writeFileSync(otherNode, buildAt("HEAD", OTHER_NODE), { mode: 0o755 });
    } catch (err) {
      runtimeNote = `not measured: the build on Node ${OTHER_NODE.version} failed: ${errorMessage(err).slice(0, 80)}`;
    }
    // The release is built from the working tree, the device from the last commit: uncommitted code counts too.
    const dirty = execFileSync("git", ["status", "--porcelain", "--", "src", "build", "package.json"], {
      cwd: ROOT,
      encoding: "utf8",
    });
    if (existsSync(otherNode) && dirty.trim() !== "") {
      runtimeNote += " (uncommitted changes: an app change is in the figure too)";
    }
    const server = await RangeServer.start(dir);
    const cases = [
      ...Array.from({ length: o.runs }, () => ({ name: "app", cmd: [o.bin], http: false })),
      // First installs: the agent from source runs no binary, so every chunk is fetched.
      { name: "install", cmd: sourceCommand(), http: false },
      { name: "install-http", cmd: sourceCommand(), http: true },
      ...(existsSync(otherNode)
        ? [
            { name: "runtime", cmd: [otherNode], http: false },
            { name: "runtime-http", cmd: [otherNode], http: true },
          ]
        : []),
    ];
    try {
      for (const c of cases) {
        const from = o.watch.items.length;
        const agent = AgentProcess.run(c.cmd, {
          device: { id: DEVICE },
          mqtt: { url: o.broker.url },
          telemetry: { interval: "10s" },
          commands: { trustedKeys: [{ name: "ops", key: ops.publicText, allow: ["*"] }] },
          update: { trustedKeys: [key.publicText] },
        });
        try {
          await o.watch.waitFor(
            (m) =>
              o.watch.items.indexOf(m) >= from &&
              m.topic === `outpost/v1/${DEVICE}/status` &&
              m.json.state === "online",
            30_000,
            "online",
          );
          await pinAgent(pins, o.broker.url, DEVICE, agent);
          await new Promise((r) => setTimeout(r, 3000));
          const pid = agent.child.pid ?? 0;
          const before = processMemory(pid).anon;
          let peak = before;
          let rssPeak = processMemory(pid).rss;
          const sampler = setInterval(() => {
            const m = processMemory(pid);
            peak = Math.max(peak, m.anon);
            rssPeak = Math.max(rssPeak, m.rss);
          }, 20);
          let r: Awaited<ReturnType<typeof runCli>> | undefined;
          const sentBefore = server.sent;
          const carried = await wire(o, async () => {
            r = await runCli([
              "ctl",
              "update",
              DEVICE,
              join(dir, "v2"),
              "--until",
              "staged",
              ...(c.http ? ["--http", server.url("v2/")] : []),
              "--broker",
              o.broker.url,
              "--key",
              join(dir, "ops.key"),
              "--known-devices",
              pins,
            ]);
          }).finally(() => clearInterval(sampler));
          if (r?.code !== 0) throw new Error(`ctl update --until staged: ${r?.code}\n${r?.out}\n${r?.err}`);
          if (!carriedBy.has(c.name)) {
            // Over HTTP the spy sees nothing; the chunks fetched are those the same case fetched over MQTT.
            const raw = carriedBy.get(c.name.replace("-http", ""))?.raw ?? Number.NaN;
            carriedBy.set(c.name, c.http ? { wire: server.sent - sentBefore, raw } : carried);
          }
          if (c.name !== "app") continue;
          idle.push(before);
          peaks.push(peak);
          rssPeaks.push(rssPeak);
        } finally {
          await agent.stop("SIGTERM");
          await agent.cleanup();
          rmSync(pins, { force: true });
        }
      }
      const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN;
      const all = (xs: number[]) => xs.map((x) => x.toFixed(1)).join(", ");
      rows.push({
        metric: "anonymous memory peak while staging a full-binary release",
        outpost: med(peaks),
        bare: med(idle),
        unit: "MiB",
        note: `${(release.manifest.size / 1024 / 1024).toFixed(1)} MiB app-only change over MQTT (ctl update --until staged), sampled every 20 ms; bare = the same agent idle just before; runs: ${all(peaks)} (idle ${all(idle)}); goal: idle + 32`,
      });
      const mib = (n: number) => n / 1024 / 1024;
      const none = { wire: Number.NaN, raw: Number.NaN };
      const app = carriedBy.get("app") ?? none;
      const install = carriedBy.get("install") ?? none;
      rows.push({
        metric: "bytes on the wire, app-only change over MQTT",
        outpost: mib(app.wire),
        bare: mib(app.raw),
        unit: "MiB",
        note: "update/data as the broker carried it, zstd where it is smaller; bare = the same ranges raw",
      });
      rows.push({
        metric: "bytes on the wire, first install over MQTT",
        outpost: mib(install.wire),
        bare: mib(install.raw),
        unit: "MiB",
        note: `the whole ${mib(release.manifest.size).toFixed(1)} MiB fetched (an agent that runs no binary); goal <= 52`,
      });
      rows.push({
        metric: "bytes on the wire, first install over HTTP",
        outpost: mib(carriedBy.get("install-http")?.wire ?? Number.NaN),
        bare: mib(release.manifest.size),
        unit: "MiB",
        note: `response bodies from a static server: chunks/<sha256>.zst, each chunk compressed alone (level ${RELEASE_ZSTD_LEVEL}, outpost release's default); goal <= 52`,
      });
      const runtime = carriedBy.get("runtime") ?? none;
      rows.push({
        metric: "bytes on the wire, Node runtime change over MQTT",
        outpost: mib(runtime.wire),
        bare: mib(runtime.raw),
        unit: "MiB",
        note: `${runtimeNote}; bare = the same ranges raw; goal <= 25`,
      });
      rows.push({
        metric: "bytes on the wire, Node runtime change over HTTP",
        outpost: mib(carriedBy.get("runtime-http")?.wire ?? Number.NaN),
        bare: mib(runtime.raw),
        unit: "MiB",
        note: "response bodies from a static server, as the first install over HTTP; bare = the ranges over MQTT, raw",
      });
      rows.push({
        metric: "  RSS peak while staging",
        outpost: med(rssPeaks),
        unit: "MiB",
        note: `runs: ${all(rssPeaks)} (page cache of the binary it reads counts in RSS)`,
      });
    } finally {
      await server.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
