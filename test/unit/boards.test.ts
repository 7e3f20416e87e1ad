// Issue 14: board detection and the board collectors, on fixture trees of a Pi 4, a Pi 5, a Jetson Orin Nano
// and an x86 machine (test/fixtures/boards/README.md cites where each file's shape comes from).
import assert from "node:assert/strict";
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { parseTegraRelease } from "../../src/telemetry/boards/detect.ts";
import { parseNvpmodelConf } from "../../src/telemetry/boards/jetson.ts";
import { decodeThrottled } from "../../src/telemetry/boards/pi.ts";
import { readsCollector } from "../../src/telemetry/module.ts";
import { diskRates, parseDiskstats, RunLedger, wear } from "../../src/telemetry/storage.ts";
import { BOARD_FIXTURES, fixtureSample } from "../helpers/boards.ts";

const FIXTURES = BOARD_FIXTURES;
const temps: string[] = [];
after(() => {
  for (const dir of temps) rmSync(dir, { recursive: true, force: true });
});

/** A writable copy of a fixture, to break files in. */
function copy(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), `outpost-board-${name}-`));
  temps.push(dir);
  cpSync(join(FIXTURES, name), dir, { recursive: true });
  return dir;
}

/** One sample of the collectors that read the fixture (not `disk`: that is a statfs of a real mount). */
async function sample(base: string) {
  const s = await fixtureSample(base, (r) => [readsCollector("wear", r, (reads) => wear(r, reads))]);
  delete s.metrics.disk;
  return s;
}

const GENERIC_4 = {
  // /proc/stat since boot: (user+nice+system+irq+softirq) / all = 246390 / 13853490
  cpu: { load: 1.8, cores: [1.8, 1.8, 1.8, 1.8] },
  uptime: { seconds: 86412 },
  load: { "1m": 0.08, "5m": 0.12, "15m": 0.09 },
};
const KiB = 1024;

describe("board detection and collectors (fixture trees)", () => {
  it("a Pi 4: model, throttling decoded into names, ARM clock, SD card, no errors", async () => {
    const s = await sample(join(FIXTURES, "pi4"));
    assert.deepEqual(s.board, {
      kind: "raspberry-pi",
      model: "Raspberry Pi 4 Model B Rev 1.4",
      compatible: ["raspberrypi,4-model-b", "brcm,bcm2711"],
      source: ["/proc/device-tree/model", "/proc/device-tree/compatible"],
    });
    assert.deepEqual(s.metrics, {
      ...GENERIC_4,
      memory: {
        total: 3885432 * KiB,
        used: (3885432 - 3212040) * KiB,
        available: 3212040 * KiB,
        swapTotal: 524284 * KiB,
        swapUsed: 0,
      },
      // lo is skipped by default; wlan0 is reported even with no traffic
      network: { eth0: { rxBytes: 918273645, txBytes: 123456789 }, wlan0: { rxBytes: 0, txBytes: 0 } },
      temperature: { cpu: 47.7, zones: { "cpu-thermal": 47.7 } },
      wear: { mmcblk0: { type: "SD" } },
      // get_throttled = 50005: under-voltage and throttled, now and since boot
      pi: {
        now: { underVoltage: true, armFrequencyCapped: false, throttled: true, softTempLimit: false },
        sinceBoot: { underVoltage: true, armFrequencyCapped: false, throttled: true, softTempLimit: false },
        armClockMHz: 1500,
      },
    });
    assert.deepEqual(s.errors, {});
  });

  it("a Pi 5 without get_throttled: under-voltage from the rpi_volt hwmon alarm", async () => {
    const s = await sample(join(FIXTURES, "pi5"));
    assert.equal(s.board.kind, "raspberry-pi");
    assert.equal(s.board.model, "Raspberry Pi 5 Model B Rev 1.0");
    assert.deepEqual(s.metrics.pi, { now: { underVoltage: false }, armClockMHz: 2400 });
    assert.deepEqual(s.metrics.temperature, { cpu: 53, zones: { "cpu-thermal": 53 } });
    assert.deepEqual(s.metrics.network, { eth0: { rxBytes: 51234567, txBytes: 7654321 } });
    assert.deepEqual(s.errors, {});
  });

  it("a Jetson Orin Nano: GPU, CPU clocks, rails with power as volts x amperes, power mode; EMC absent with why", async () => {
    const s = await sample(join(FIXTURES, "jetson-orin-nano"));
    assert.deepEqual(s.board, {
      kind: "jetson",
      model: "NVIDIA Jetson Orin Nano Developer Kit",
      compatible: ["nvidia,p3768-0000+p3767-0005", "nvidia,p3767-0005", "nvidia,tegra234"],
      l4t: "36.3.0",
      source: ["/proc/device-tree/model", "/proc/device-tree/compatible", "/etc/nv_tegra_release"],
    });
    assert.deepEqual(s.metrics.jetson, {
      gpu: { loadPercent: 27.6, clockMHz: 624.8 },
      cpuClockMHz: { cpu0: 1510, cpu1: 1510, cpu2: 1510, cpu3: 1510, cpu4: 730, cpu5: 730 },
      rails: {
        VDD_IN: { volts: 5.056, amperes: 1.304, watts: 6.593 },
        VDD_CPU_GPU_CV: { volts: 5.048, amperes: 0.416, watts: 2.1 },
        VDD_SOC: { volts: 5.048, amperes: 0.328, watts: 1.656 },
      },
      powerMode: { id: 0, name: "15W" },
    });
    // The hottest CPU-like zone (cpu-thermal, soc*-thermal) is `cpu`.
    assert.equal((s.metrics.temperature as { cpu: number }).cpu, 48.2);
    assert.equal(Object.keys((s.metrics.temperature as { zones: object }).zones).length, 9);
    assert.deepEqual(s.errors, {
      "jetson.emcClockMHz":
        "ENOENT: /sys/kernel/debug/bpmp/debug/clk/emc/rate (the EMC clock is only in debugfs, which only root can read)",
    });
  });

  it("an x86 machine: DMI names it; no board collector", async () => {
    const s = await sample(join(FIXTURES, "x86"));
    assert.deepEqual(s.board, {
      kind: "x86",
      model: "Intel Corporation NUC8i5BEH",
      compatible: [],
      source: ["/sys/class/dmi/id"],
    });
    assert.deepEqual(Object.keys(s.metrics).sort(), ["cpu", "load", "memory", "network", "temperature", "uptime"]);
    assert.deepEqual(s.metrics.temperature, { cpu: 41, zones: { acpitz: 27.8, x86_pkg_temp: 41 } });
    assert.deepEqual(s.errors, {});
  });

  it("a missing or unreadable file: that metric is absent, the reason is in errors, the rest is reported", async () => {
    const pi = copy("pi4");
    const firmware = join(pi, "sys", "devices", "platform", "soc", "soc:firmware");
    // A directory where a file should be reads as EISDIR: unreadable even for root, who ignores modes.
    rmSync(join(firmware, "get_throttled"));
    mkdirSync(join(firmware, "get_throttled"));
    rmSync(join(pi, "sys", "devices", "system", "cpu", "cpu0", "cpufreq", "scaling_cur_freq"));
    rmSync(join(pi, "sys", "class", "thermal", "thermal_zone0", "temp"));
    const s = await sample(pi);
    assert.equal(s.metrics.pi, undefined);
    assert.equal(s.metrics.temperature, undefined);
    assert.deepEqual(s.metrics.cpu, GENERIC_4.cpu);
    assert.deepEqual(s.errors, {
      "pi.throttled": "EISDIR: /sys/devices/platform/soc/soc:firmware/get_throttled",
      "pi.armClockMHz": "ENOENT: /sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq",
      "temperature.thermal_zone0": "ENOENT: /sys/class/thermal/thermal_zone0",
    });

    const jetson = copy("jetson-orin-nano");
    const hwmon = join(jetson, "sys", "bus", "i2c", "drivers", "ina3221", "1-0040", "hwmon", "hwmon1");
    writeFileSync(join(hwmon, "curr3_input"), "n/a\n");
    rmSync(join(jetson, "sys", "class", "devfreq", "17000000.gpu", "device", "load"));
    rmSync(join(jetson, "host", "var", "lib", "nvpmodel", "status"));
    const j = await sample(jetson);
    const metrics = j.metrics.jetson as Record<string, unknown>;
    assert.deepEqual(metrics.gpu, { clockMHz: 624.8 });
    assert.deepEqual(Object.keys(metrics.rails as object), ["VDD_IN", "VDD_CPU_GPU_CV"]);
    assert.equal(metrics.powerMode, undefined);
    assert.equal(j.errors["jetson.gpu.loadPercent"], "ENOENT: /sys/class/devfreq/17000000.gpu/device/load");
    assert.equal(
      j.errors["jetson.rails.VDD_SOC"],
      'not a number in /sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1/curr3_input: "n/a"',
    );
    assert.equal(j.errors["jetson.powerMode"], "ENOENT: /var/lib/nvpmodel/status");

    // No sysfs node of the Pi at all: the collector says so, the agent does not fail.
    const bare = copy("pi5");
    rmSync(join(bare, "sys"), { recursive: true });
    const b = await sample(bare);
    assert.equal(b.metrics.pi, undefined);
    assert.match(b.errors["pi.throttled"] ?? "", /neither get_throttled nor the rpi_volt hwmon/);
    assert.match(b.errors["pi.armClockMHz"] ?? "", /^ENOENT/);
  });

  it("an eMMC's wear estimates and pre-EOL level (Documentation/mmc/mmc-dev-attrs.rst)", async () => {
    const dir = copy("pi4");
    const device = join(dir, "sys", "block", "mmcblk1", "device");
    mkdirSync(device, { recursive: true });
    writeFileSync(join(device, "type"), "MMC\n");
    writeFileSync(join(device, "life_time"), "0x02 0x0b\n");
    writeFileSync(join(device, "pre_eol_info"), "0x02\n");
    const s = await sample(dir);
    assert.deepEqual(s.metrics.wear, {
      mmcblk0: { type: "SD" },
      mmcblk1: { type: "MMC", lifeUsedPercent: { a: 20, b: 110 }, preEol: "warning" },
    });
  });

  it("decodes every throttling bit, and the files' small formats", () => {
    assert.deepEqual(decodeThrottled(0), {
      now: { underVoltage: false, armFrequencyCapped: false, throttled: false, softTempLimit: false },
      sinceBoot: { underVoltage: false, armFrequencyCapped: false, throttled: false, softTempLimit: false },
    });
    assert.deepEqual(decodeThrottled(0xf000f), {
      now: { underVoltage: true, armFrequencyCapped: true, throttled: true, softTempLimit: true },
      sinceBoot: { underVoltage: true, armFrequencyCapped: true, throttled: true, softTempLimit: true },
    });
    assert.deepEqual(decodeThrottled(0x80008).now.softTempLimit, true);
    assert.equal(parseTegraRelease("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref"), "35.4.1");
    assert.equal(parseTegraRelease("garbage"), undefined);
    assert.deepEqual(
      [...parseNvpmodelConf("< POWER_MODEL ID=0 NAME=MAXN >\nX\n< POWER_MODEL ID=2 NAME=15W >").entries()],
      [
        [0, "MAXN"],
        [2, "15W"],
      ],
    );
  });

  it("disk I/O: whole disks only, rates between two readings", () => {
    const before = parseDiskstats(
      "   8       0 sda 100 0 2048 10 50 0 4096 20 0 100 30 0 0 0 0 0 0\n   8       1 sda1 1 0 8 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n   7       0 loop0 5 0 10 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
    );
    assert.deepEqual(Object.keys(before), ["sda"]);
    assert.deepEqual(before.sda, { readBytes: 2048 * 512, writeBytes: 4096 * 512, busyMs: 100 });
    const after = { sda: { readBytes: 2048 * 512 + 2_000_000, writeBytes: 4096 * 512 + 500_000, busyMs: 600 } };
    assert.deepEqual(diskRates(before, after, 2000), {
      sda: { readBytesPerS: 1_000_000, writeBytesPerS: 250_000, busyPercent: 25 },
    });
  });

  it("counts starts and the ones after an unclean stop, across three runs", () => {
    const dir = mkdtempSync(join(tmpdir(), "outpost-runs-"));
    temps.push(dir);
    const first = new RunLedger(dir);
    assert.deepEqual([first.starts, first.unclean, first.previousUnclean], [1, 0, false]);
    first.stopped();
    const second = new RunLedger(dir); // then killed: no stopped()
    assert.deepEqual([second.starts, second.unclean], [2, 0]);
    const third = new RunLedger(dir);
    assert.deepEqual([third.starts, third.unclean, third.previousUnclean], [3, 1, true]);
  });
});
