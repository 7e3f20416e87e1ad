// Issue 14, item 6: ctl watch and the demo merge partial samples into the last full one, so the view shows
// every current value, and a Pi's flags by name.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { applyMessage, type DeviceView, renderPanel, telemetryLine } from "../../src/cli/view.ts";

const P = "outpost/v1";
const MiB = 1024 * 1024;
const send = (devices: Map<string, DeviceView>, topic: string, body: unknown) =>
  applyMessage(devices, P, `${P}/${topic}`, Buffer.from(JSON.stringify(body)));

describe("terminal view", () => {
  it("merges partial samples into the last full one", () => {
    const devices = new Map<string, DeviceView>();
    send(devices, "pi-1/status", {
      state: "online",
      version: "0.1.0",
      board: { kind: "raspberry-pi", model: "Raspberry Pi 4 Model B Rev 1.4" },
    });
    send(devices, "pi-1/telemetry", {
      seq: 1,
      full: true,
      metrics: {
        cpu: { load: 10, cores: [10, 10] },
        memory: { total: 4096 * MiB, used: 1000 * MiB },
        temperature: { cpu: 50 },
        pi: { now: { underVoltage: true, throttled: false }, sinceBoot: { underVoltage: true }, armClockMHz: 1500 },
      },
    });
    send(devices, "pi-1/telemetry", { seq: 2, full: false, metrics: { temperature: { cpu: 52 } } });
    const device = devices.get("pi-1");
    assert.ok(device);
    // The memory of the full sample is still shown; the temperature is the partial's.
    assert.equal(telemetryLine(device), "pi-1 seq=2 cpu=10.0% mem=1000MiB temp=52.0C");
    const panel = renderPanel([device], []);
    assert.match(panel, /board {5}Raspberry Pi 4 Model B Rev 1\.4/);
    assert.match(panel, /pi {8}now underVoltage {3}since boot underVoltage {3}arm 1500 MHz/);
    // A new full sample replaces everything: a metric it lacks is gone.
    send(devices, "pi-1/telemetry", { seq: 3, full: true, metrics: { cpu: { load: 1, cores: [1, 1] } } });
    assert.equal(telemetryLine(device), "pi-1 seq=3 cpu=1.0% mem=- temp=-");
  });

  // Issue 23 item 10: on 8ee023c a late viewer showed "-" for memory, disk and uptime until the next full sample
  // (up to 5 minutes), the uptime stayed frozen between full samples, and the cores had no unit.
  it("a late viewer starts from the retained full sample; the uptime runs on; every column has its unit", () => {
    const devices = new Map<string, DeviceView>();
    const full = {
      session: "s1",
      ts: 1_000_000,
      full: true,
      metrics: {
        cpu: { load: 10, cores: [58, 77] },
        memory: { total: 4096 * MiB, used: 1000 * MiB },
        disk: { usePercent: 40 },
        uptime: { seconds: 3600 },
      },
    };
    // Joined late: a partial sample may come before the retained full one, or after it.
    send(devices, "pi-1/telemetry", {
      session: "s1",
      seq: 40,
      ts: 1_030_000,
      full: false,
      metrics: { cpu: { load: 20 } },
    });
    send(devices, "pi-1/telemetry/full", full);
    const panel = renderPanel([...devices.values()], []);
    assert.match(panel, /memory {4}1000 \/ 4096 MiB/);
    assert.match(panel, /disk \/ {4}40\.0%/);
    assert.match(panel, /cores 58% 77%/);
    assert.match(panel, /seq 40/);
    send(devices, "pi-1/telemetry", {
      session: "s1",
      seq: 41,
      ts: 1_060_000,
      full: false,
      metrics: { cpu: { load: 30 } },
    });
    assert.match(renderPanel([...devices.values()], []), /uptime 3660 s/);
    // An older retained sample never replaces what is held.
    send(devices, "pi-1/telemetry/full", {
      ...full,
      ts: 900_000,
      metrics: { ...full.metrics, disk: { usePercent: 1 } },
    });
    assert.match(renderPanel([...devices.values()], []), /disk \/ {4}40\.0%/);
  });
});
