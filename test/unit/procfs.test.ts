import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { WithErrors } from "../../src/kernel/module.ts";
import { systemCollectors, thermalZones } from "../../src/telemetry/collectors.ts";
import { busyPercent, parseNetDev, parseProcStat } from "../../src/telemetry/procfs.ts";

const STAT_1 = `cpu  100 0 100 800 0 0 0 0 0 0
cpu0 50 0 50 400 0 0 0 0 0 0
cpu1 50 0 50 400 0 0 0 0 0 0
intr 12345
`;
const STAT_2 = `cpu  150 0 150 850 50 0 0 0 0 0
cpu0 100 0 100 400 0 0 0 0 0 0
cpu1 50 0 50 450 50 0 0 0 0 0
`;
const NET_DEV = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    3940      40    0    0    0     0          0         0     3940      40    0    0    0     0       0          0
  eth0: 310774899  212345    0    0    0     0          0         0   548400    6000    0    0    0     0       0          0
  ifb0:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
veth1a2b:   1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
docker0:    2000      20    0    0    0     0          0         0     2000      20    0    0    0     0       0          0
br-3f00:    3000      30    0    0    0     0          0         0     3000      30    0    0    0     0       0          0
  ppp0:   77777     700    0    0    0     0          0         0    88888     800    0    0    0     0       0          0
 wwan0:    1234      12    0    0    0     0          0         0     4321      43    0    0    0     0       0          0
   wg0:     555       5    0    0    0     0          0         0      666       6    0    0    0     0       0          0
`;

let root: string;
before(() => {
  root = mkdtempSync(join(tmpdir(), "outpost-fixture-"));
});
after(() => rmSync(root, { recursive: true, force: true }));

function zone(dir: string, n: number, type: string, milli: string): void {
  const z = join(dir, `thermal_zone${n}`);
  mkdirSync(z, { recursive: true });
  writeFileSync(join(z, "type"), `${type}\n`);
  writeFileSync(join(z, "temp"), `${milli}\n`);
}

describe("procfs parsers", () => {
  it("computes total and per-core busy percentages between two /proc/stat readings", () => {
    const a = parseProcStat(STAT_1);
    const b = parseProcStat(STAT_2);
    assert.ok(a && b);
    assert.equal(a.cores.length, 2);
    // 200 jiffies passed, 100 of them idle or iowait.
    assert.equal(busyPercent(a.all, b.all), 50);
    assert.equal(busyPercent(a.cores[0], b.cores[0] ?? a.all), 100);
    assert.equal(busyPercent(a.cores[1], b.cores[1] ?? a.all), 0);
    assert.equal(busyPercent(b.all, b.all), 0, "no time passed");
    assert.equal(Math.round(busyPercent(undefined, a.all)), 20, "since boot");
    assert.equal(parseProcStat("intr 1\n"), undefined);
  });

  it("reads byte counters per interface from /proc/net/dev", () => {
    assert.deepEqual(parseNetDev(NET_DEV).lo, { rxBytes: 3940, txBytes: 3940 });
    assert.deepEqual(parseNetDev(NET_DEV).eth0, { rxBytes: 310774899, txBytes: 548400 });
    assert.equal(Object.keys(parseNetDev(NET_DEV)).length, 9);
  });

  it("reads a Raspberry Pi's cpu-thermal zone", async () => {
    const dir = join(root, "pi", "class", "thermal");
    zone(dir, 0, "cpu-thermal", "51540");
    assert.deepEqual(await thermalZones(dir), { cpu: 51.5, zones: { "cpu-thermal": 51.5 } });
  });

  it("picks the hottest CPU zone of a Jetson and keeps the others, skipping unreadable ones", async () => {
    const dir = join(root, "jetson", "class", "thermal");
    zone(dir, 0, "CPU-therm", "47000");
    zone(dir, 1, "GPU-therm", "45500");
    zone(dir, 2, "SOC0-therm", "48500");
    zone(dir, 3, "PMIC-Die", "not a number");
    mkdirSync(join(dir, "thermal_zone4"));
    // The unreadable zones are left out and named, with the reason, in the sample's errors.
    assert.deepEqual(
      await thermalZones(dir),
      new WithErrors(
        { cpu: 48.5, zones: { "CPU-therm": 47, "GPU-therm": 45.5, "SOC0-therm": 48.5 } },
        {
          "temperature.thermal_zone3": 'not a number in /sys/class/thermal/thermal_zone3/temp: "not a number"',
          "temperature.thermal_zone4": "ENOENT: /sys/class/thermal/thermal_zone4",
        },
      ),
    );
  });

  it("reports no temperature on a board without thermal zones", async () => {
    assert.equal(await thermalZones(join(root, "none")), null);
  });

  it("collects cpu, network and temperature from fixture /proc and /sys trees", async () => {
    const proc = join(root, "proc");
    mkdirSync(join(proc, "net"), { recursive: true });
    writeFileSync(join(proc, "stat"), STAT_1);
    writeFileSync(join(proc, "net", "dev"), NET_DEV);
    const sys = join(root, "pi");
    const collectors = new Map(systemCollectors({ procRoot: proc, sysRoot: sys }).map((c) => [c.name, c]));
    const cpu = collectors.get("cpu");
    assert.ok(cpu);
    assert.deepEqual(await cpu.collect(), { load: 20, cores: [20, 20] });
    writeFileSync(join(proc, "stat"), STAT_2);
    assert.deepEqual(await cpu.collect(), { load: 50, cores: [100, 0] });
    // Issue 10 item 12: loopback, virtual and bridge interfaces are skipped by default (bbb3be8 listed lo and
    // ifb0); the usual uplinks (ppp, wwan, wg) are never hidden, even by a pattern that would match them.
    assert.deepEqual(Object.keys((await collectors.get("network")?.collect()) as object), [
      "eth0",
      "ppp0",
      "wwan0",
      "wg0",
    ]);
    const all = new Map(
      systemCollectors({ procRoot: proc, sysRoot: sys, skipInterfaces: () => ["*"] }).map((c) => [c.name, c]),
    );
    assert.deepEqual(Object.keys((await all.get("network")?.collect()) as object), ["ppp0", "wwan0", "wg0"]);
    assert.deepEqual(await collectors.get("temperature")?.collect(), { cpu: 51.5, zones: { "cpu-thermal": 51.5 } });
  });
});
