// Issue 26, part B: a fleet simulated honestly (test/helpers/fleet.ts: the real agent code for each device, in
// this process) on one mosquitto: `ctl devices` over the fleet, a rollout through it with 3 % of the devices
// scripted to roll back, and a rollout whose driver is SIGKILLed at seeded points. The driver and `ctl` run
// as the built binary (dist/), in their own processes.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { KnownDevices } from "../src/cli/known-devices.ts";
import { parseWaves, planWaves } from "../src/cli/rollout-plan.ts";
import { generateKeys } from "../src/commands/keys.ts";
import { ROOT } from "../test/helpers/agent-process.ts";
import { Fleet, fleetRelease } from "../test/helpers/fleet.ts";
import { Mosquitto } from "../test/helpers/mosquitto.ts";
import type { BenchRow } from "./bench-board.ts";

const MiB = 1024 * 1024;

/** A process's resident memory now (kB in /proc), or 0 once it is gone. */
function rssOf(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** A seeded generator: the same devices fail and the same kill points come each run. */
function seeded(seed: number) {
  let x = seed;
  return () => {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    return x / 2 ** 31;
  };
}

export async function rolloutRows(
  rows: BenchRow[],
  o: { bin: string; devices: number; crashDevices: number; kills: number; cpuOf: (pid: number) => number },
): Promise<void> {
  mkdirSync(join(ROOT, ".cache"), { recursive: true });
  const dir = mkdtempSync(join(ROOT, ".cache", "bench-rollout-"));
  const broker = await Mosquitto.start();
  const ids = Array.from({ length: o.devices }, (_, i) => `sim-${String(i).padStart(4, "0")}`);
  const ops = generateKeys();
  const rel = generateKeys();
  const keyFile = join(dir, "ops.key");
  writeFileSync(keyFile, ops.privatePem, { mode: 0o600 });
  const pins = join(dir, "known_devices");
  const db = join(dir, "rollouts.db");
  const flags = ["--broker", broker.url, "--key", keyFile, "--known-devices", pins, "--rollouts", db];
  const children = new Set<ChildProcess>();
  const release = (version: string) => fleetRelease(dir, version, rel.privatePem);
  const ctl = (args: string[], onLine?: (line: string) => void) => {
    const child = spawn(o.bin, ["ctl", ...args, ...flags], { stdio: ["ignore", "pipe", "pipe"] });
    children.add(child);
    let err = "";
    let rest = "";
    child.stdout?.on("data", (c: Buffer) => {
      rest += c.toString();
      const lines = rest.split("\n");
      rest = lines.pop() ?? "";
      for (const l of lines) onLine?.(l);
    });
    child.stderr?.on("data", (c: Buffer) => {
      err += c.toString();
    });
    const exited = new Promise<number | null>((resolve) =>
      child.on("exit", (code) => {
        children.delete(child);
        resolve(code);
      }),
    );
    return { child, exited, err: () => err };
  };
  const status = () =>
    JSON.parse(
      execFileSync(o.bin, ["ctl", "rollout", "status", "--json", "--all", ...flags], { encoding: "utf8" }),
    ) as {
      id: string;
      state: string;
      reason: string | null;
      waves: {
        wave: number;
        started: string | null;
        committed: number;
        rolledBack: number;
        failed: number;
        timedOut: number;
        offline: number;
        inFlight: number;
        pending: number;
        total: number;
      }[];
      devices: { device: string; state: string }[];
    };
  const fleet = new Fleet(ids, {
    dir,
    brokerUrl: broker.url,
    operatorKey: ops.publicText,
    releaseKey: rel.publicText,
    running: { version: "1.0.0", sha256: "a".repeat(64) },
  });
  try {
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    await fleet.start();
    const startS = (performance.now() - t0) / 1000;
    rows.push({
      metric: `simulator: start ${o.devices} devices (real agent code, one process)`,
      outpost: startS,
      unit: "s",
    });
    const known = KnownDevices.load(pins);
    const brokerId = `127.0.0.1:${broker.port}`;
    for (const d of fleet.devices) {
      known.pin({
        broker: brokerId,
        prefix: "outpost/v1",
        device: d.id,
        key: readFileSync(d.publicKeyFile, "utf8").trim(),
      });
    }
    known.save();
    await new Promise((r) => setTimeout(r, 3000));
    rows.push({
      metric: "simulator: its process's memory, idle",
      outpost: rssOf(process.pid) / MiB,
      unit: "MiB",
      note: `${(rssOf(process.pid) / o.devices / 1024).toFixed(0)} KiB per device, shared heap`,
    });

    // The fleet view: every device's retained status, from devices that really run.
    const views: number[] = [];
    for (let i = 0; i < 3; i++) {
      const t = performance.now();
      const out = execFileSync(o.bin, ["ctl", "devices", "--broker", broker.url, "--known-devices", pins], {
        encoding: "utf8",
        maxBuffer: 64 * MiB,
      });
      views.push((performance.now() - t) / 1000);
      const listed = out.split("\n").filter((l) => l.startsWith("sim-")).length;
      if (listed !== o.devices) throw new Error(`ctl devices listed ${listed} of ${o.devices}`);
    }
    views.sort((a, b) => a - b);
    rows.push({
      metric: `ctl devices, ${o.devices} simulated devices (median of 3)`,
      outpost: views[1] ?? 0,
      unit: "s",
      note: "goal < 2 s; the binary's start included",
    });

    // A rollout with 3 % scripted to roll back (never the canary): it pauses where the threshold is crossed.
    const a = release("1.1.0");
    const plan = planWaves(ids, { waves: parseWaves("1,10%,50%,100%"), seed: "bench", canaries: [] }).waves;
    const rand = seeded(26);
    const failing = new Set(
      ids
        .filter((id) => id !== plan[0]?.[0])
        .sort(() => rand() - 0.5)
        .slice(0, Math.round(o.devices * 0.03)),
    );
    for (const id of failing) fleet.device(id).outcome = "rollback";
    const waveStarts: number[] = [];
    const started = performance.now();
    const brokerCpu0 = o.cpuOf(broker.pid ?? 0);
    let brokerPeak = 0;
    let driverPeak = 0;
    const run = ctl(
      ["rollout", a.dir, "--all-pinned", "--seed", "bench", "--soak", "2s", "--deadline", "10m"],
      (line) => {
        if (/^wave \d+ started/.test(line)) waveStarts.push(performance.now());
      },
    );
    const sampler = setInterval(() => {
      brokerPeak = Math.max(brokerPeak, rssOf(broker.pid));
      driverPeak = Math.max(driverPeak, rssOf(run.child.pid));
    }, 250);
    const code = await run.exited;
    clearInterval(sampler);
    const ended = performance.now();
    const wall = (ended - started) / 1000;
    const brokerCpu = o.cpuOf(broker.pid ?? 0) - brokerCpu0;
    const s = status();
    const where = s.waves.filter((w) => w.started !== null).length;
    // The truth, from the simulated devices themselves.
    const committed = fleet.devices.filter((d) => d.release.name === a.name).length;
    // Rolled back: installed, and back on the release before (scripted, or a trial that failed under load).
    const rolledBack = fleet.devices.filter(
      (d) => (d.installs.get(a.name) ?? 0) > 0 && d.release.name !== a.name,
    ).length;
    const unscripted = fleet.devices.filter(
      (d) => !failing.has(d.id) && (d.installs.get(a.name) ?? 0) > 0 && d.release.name !== a.name,
    ).length;
    const counted = s.waves.reduce(
      (n, w) => ({ c: n.c + w.committed, r: n.r + w.rolledBack, f: n.f + w.failed + w.timedOut }),
      { c: 0, r: 0, f: 0 },
    );
    const right = counted.c === committed && counted.r === rolledBack && counted.f === 0;
    const twice = fleet.devices.filter((d) => (d.installs.get(a.name) ?? 0) > 1).length;
    rows.push({
      metric: `rollout through ${o.devices} devices, 3 % scripted to roll back`,
      outpost: wall,
      unit: "s",
      note: `exit ${code}, ${s.state} in wave ${where} (${s.reason ?? ""}); journal ${counted.c} committed / ${counted.r} rolled back, devices ${committed} / ${rolledBack} (${unscripted} not scripted: trials that failed under the load): ${right ? "every count right" : "COUNTS DIFFER"}; ${twice} installed twice`,
    });
    for (const [i, t] of waveStarts.entries()) {
      const end = waveStarts[i + 1] ?? ended;
      const w = s.waves[i];
      rows.push({
        metric: `  wave ${i + 1} (${w?.total ?? 0} devices): start to next wave or end`,
        outpost: (end - t) / 1000,
        unit: "s",
        note: "soak 2 s included",
      });
    }
    rows.push({
      metric: "  broker CPU during the rollout",
      outpost: brokerCpu,
      unit: "s",
      note: `peak RSS ${(brokerPeak / MiB).toFixed(1)} MiB`,
    });
    rows.push({ metric: "  driver (ctl rollout) peak RSS", outpost: driverPeak / MiB, unit: "MiB" });
    const cpu = process.cpuUsage(cpu0);
    rows.push({
      metric: "  simulator CPU, start and rollout",
      outpost: (cpu.user + cpu.system) / 1e6,
      unit: "s",
      note: `RSS now ${(rssOf(process.pid) / MiB).toFixed(0)} MiB`,
    });

    // The driver killed at seeded points of a rollout through the first `crashDevices` devices.
    for (const d of fleet.devices) d.outcome = "commit";
    const b = release("1.2.0");
    const targets = ids.slice(0, o.crashDevices);
    const crashPlan = planWaves(targets, { waves: parseWaves("1,10%,50%,100%"), seed: "crash", canaries: [] }).waves;
    const crashFailing = new Set(
      targets
        .filter((id) => id !== crashPlan[0]?.[0])
        .sort(() => rand() - 0.5)
        .slice(0, Math.round(o.crashDevices * 0.03)),
    );
    for (const id of crashFailing) fleet.device(id).outcome = "rollback";
    const crashStart = performance.now();
    // Its scripted failures neither pause it nor keep a wave from passing: what is judged is the counts.
    let driver = ctl([
      "rollout",
      b.dir,
      "--devices",
      targets.join(","),
      "--seed",
      "crash",
      "--soak",
      "1s",
      "--failure",
      "50%",
      "--success",
      "80%",
    ]);
    let id: string | undefined;
    for (let k = 0; k < o.kills; k++) {
      await new Promise((r) => setTimeout(r, 500 + rand() * 3500));
      driver.child.kill("SIGKILL");
      await driver.exited;
      id ??= status().id;
      driver = ctl(["rollout", "resume", id]);
    }
    const crashCode = await driver.exited;
    const cs = status();
    const cCommitted = fleet.devices.filter((d) => targets.includes(d.id) && d.release.name === b.name).length;
    const cCounted = cs.waves.reduce(
      (n, w) => ({ c: n.c + w.committed, r: n.r + w.rolledBack, f: n.f + w.failed + w.timedOut }),
      { c: 0, r: 0, f: 0 },
    );
    const cRight =
      cCounted.c === cCommitted &&
      cCommitted === targets.length - crashFailing.size &&
      cCounted.r === crashFailing.size &&
      cCounted.f === 0;
    const cTwice = fleet.devices.filter((d) => (d.installs.get(b.name) ?? 0) > 1).length;
    rows.push({
      metric: `crash test: ${o.crashDevices} devices, driver SIGKILLed ${o.kills} times`,
      outpost: (performance.now() - crashStart) / 1000,
      unit: "s",
      note: `exit ${crashCode}, ${cs.state}; ${cCounted.c} committed, ${cCounted.r} rolled back (scripted ${targets.length - crashFailing.size} / ${crashFailing.size}): ${cRight ? "every count right" : "COUNTS DIFFER"}; ${cTwice} installed twice`,
    });
  } finally {
    for (const c of children) c.kill("SIGKILL");
    await fleet.stop();
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
