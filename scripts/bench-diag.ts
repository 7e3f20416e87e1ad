// Issue 28: what remote diagnostics cost. The built agent (telemetry every second, so that there is something to
// sample) answers each verb through ctl; the bytes on the wire are counted on its diag topic by another client,
// and the CPU a 30 s profile adds is the agent's CPU time during it against 30 s without.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import mqtt from "mqtt";
import { AgentProcess } from "../test/helpers/agent-process.ts";
import { runCli } from "../test/helpers/cli.ts";
import type { Mosquitto } from "../test/helpers/mosquitto.ts";
import type { Watch } from "../test/helpers/mqtt-watch.ts";
import { pinAgent } from "../test/helpers/pins.ts";
import { tempDir } from "../test/helpers/temp.ts";
import type { BenchRow } from "./bench-board.ts";

const DEVICE = "bench-diag";

/** The process's CPU time so far, in milliseconds (utime + stime, at 100 ticks a second). */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

export async function diagRows(rows: BenchRow[], o: { bin: string; broker: Mosquitto; watch: Watch; seconds: number }) {
  const dir = tempDir("outpost-bench-diag-");
  const made = await runCli(["keygen", "--out", join(dir, "ops")]);
  const pub = /ed25519:\S+/.exec(made.out)?.[0] ?? "";
  const agent = AgentProcess.run([o.bin], {
    device: { id: DEVICE },
    mqtt: { url: o.broker.url },
    telemetry: { interval: "1s" },
    commands: { trustedKeys: [{ name: "ops", key: pub, allow: ["*", "debug.heap-snapshot"] }] },
  });
  const spy = await mqtt.connectAsync({ host: "127.0.0.1", port: o.broker.port, protocolVersion: 5 });
  let bytes = 0;
  spy.on("message", (_t, payload) => {
    bytes += payload.length;
  });
  try {
    await o.watch.waitFor(
      (m) => m.topic === `outpost/v1/${DEVICE}/status` && m.json.state === "online",
      30_000,
      "online",
    );
    await spy.subscribeAsync(`outpost/v1/${DEVICE}/diag`, { qos: 1 });
    const pins = join(dir, "known_devices");
    await pinAgent(pins, o.broker.url, DEVICE, agent);
    const flags = ["--broker", o.broker.url, "--key", join(dir, "ops.key"), "--known-devices", pins];
    const pid = agent.child.pid ?? 0;
    // Lines in the ring to read: the agent's own, a minute of them at the default level.
    await new Promise((r) => setTimeout(r, 5000));
    const verb = async (name: string, args: string[]) => {
      const before = bytes;
      const cpu = cpuMs(pid);
      const t = performance.now();
      const r = await runCli(["ctl", ...args, DEVICE, ...flags, "--out", join(dir, name.replace(/\W+/g, "-"))]);
      if (r.code !== 0) throw new Error(`${name}: ${r.err}`);
      // The last chunks may still be on their way to the spy.
      await new Promise((res) => setTimeout(res, 300));
      return { wire: bytes - before, cpu: cpuMs(pid) - cpu, ms: performance.now() - t };
    };
    const kib = (n: number) => Math.round((n / 1024) * 10) / 10;
    const logs = await runCli(["ctl", "logs", DEVICE, "--json", ...flags]).then(async (r) => {
      await new Promise((res) => setTimeout(res, 300));
      return r;
    });
    if (logs.code !== 0) throw new Error(`logs: ${logs.err}`);
    rows.push({
      metric: "ctl logs, bytes on the wire",
      outpost: kib(bytes),
      unit: "KiB",
      note: `${logs.out.split("\n").filter(Boolean).length} lines, ${kib(logs.out.length)} KiB as JSON; zstd, sealed`,
    });
    // The CPU a 30 s profile adds: the agent alone for 30 s, then profiling itself for 30 s.
    const seconds = Math.min(30, o.seconds);
    const idleCpu = cpuMs(pid);
    await new Promise((r) => setTimeout(r, seconds * 1000));
    const idle = cpuMs(pid) - idleCpu;
    const cpu = await verb("cpu", ["profile", "--cpu", `${seconds}s`]);
    rows.push({
      metric: `CPU profile of ${seconds} s: the agent's CPU during it`,
      outpost: Math.round(cpu.cpu / seconds),
      bare: Math.round(idle / seconds),
      unit: "ms/s",
      note: `bare = the same ${seconds} s without a profile (1 s telemetry); ${kib(cpu.wire)} KiB on the wire`,
    });
    const heap = await verb("heap", ["profile", "--heap", `${seconds}s`]);
    rows.push({
      metric: `heap profile of ${seconds} s: the agent's CPU during it`,
      outpost: Math.round(heap.cpu / seconds),
      bare: Math.round(idle / seconds),
      unit: "ms/s",
      note: `${kib(heap.wire)} KiB on the wire`,
    });
    const bundle = await verb("bundle", ["diag"]);
    rows.push({
      metric: "ctl diag, bytes on the wire",
      outpost: kib(bundle.wire),
      unit: "KiB",
      note: `${Math.round(bundle.ms)} ms`,
    });
    const snap = await verb("snapshot", ["profile", "--heap-snapshot"]);
    rows.push({
      metric: "heap snapshot, bytes on the wire",
      outpost: kib(snap.wire),
      unit: "KiB",
      note: `${Math.round(snap.ms)} ms, ${snap.cpu} ms of the agent's CPU (snapshot, scrub, zstd, seal)`,
    });
  } finally {
    await spy.endAsync(true);
    await agent.cleanup();
  }
}
