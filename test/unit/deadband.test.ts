// Issue 14, item 6: change-aware reporting (deadbands, full samples, counters in full samples only) and the
// merge a consumer does.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { mergeReport } from "../../src/core/merge.ts";
import { DEFAULT_DEADBANDS, FULL_ONLY } from "../../src/telemetry/config.ts";
import { ChangeFilter, type ChangePolicy } from "../../src/telemetry/deadband.ts";

const MiB = 1024 * 1024;
const policy: ChangePolicy = {
  deadbands: DEFAULT_DEADBANDS,
  fullOnly: FULL_ONLY,
  fullIntervalMs: 60_000,
  intervalMs: 10_000,
};

function device(over: { load?: number; temp?: number; used?: number; uptime?: number; rx?: number } = {}) {
  return {
    cpu: { load: over.load ?? 10, cores: [over.load ?? 10, 12] },
    temperature: { cpu: over.temp ?? 50, zones: { "cpu-thermal": over.temp ?? 50 } },
    memory: { total: 4096 * MiB, used: over.used ?? 1000 * MiB },
    uptime: { seconds: over.uptime ?? 100 },
    network: { eth0: { rxBytes: over.rx ?? 1000, txBytes: 10 } },
  };
}

describe("change-aware reporting", () => {
  it("sends a full sample first, then only what moved past its deadband, nothing when nothing did", () => {
    const f = new ChangeFilter();
    const first = f.decide(device(), {}, 0, policy);
    assert.deepEqual(first, { full: true, metrics: device() });
    // CPU +4 (band 5), temperature +0.9 (band 1), memory +15 MiB (band 16 MiB), counters moved: nothing.
    assert.equal(
      f.decide(device({ load: 14, temp: 50.9, used: 1015 * MiB, uptime: 110, rx: 5000 }), {}, 10_000, policy),
      undefined,
    );
    // Temperature reaches +1.0 from the last *sent* value (50), memory still within its band.
    assert.deepEqual(f.decide(device({ load: 14, temp: 51, used: 1010 * MiB, uptime: 120 }), {}, 20_000, policy), {
      full: false,
      metrics: { temperature: { cpu: 51, zones: { "cpu-thermal": 51 } } },
    });
    // A core moving by 5 sends the whole cores array; the aggregate, which moved by 5 too, goes with it.
    assert.deepEqual(f.decide(device({ load: 15, temp: 51 }), {}, 30_000, policy), {
      full: false,
      metrics: { cpu: { load: 15, cores: [15, 12] } },
    });
    // The full interval passed: everything, counters included.
    const full = f.decide(device({ load: 15, temp: 51, uptime: 160, rx: 9000 }), {}, 60_000, policy);
    assert.equal(full?.full, true);
    assert.deepEqual(full?.metrics, device({ load: 15, temp: 51, uptime: 160, rx: 9000 }));
  });

  it("a slow drift is sent once it adds up to the band, not lost step by step", () => {
    const f = new ChangeFilter();
    f.decide(device({ temp: 50 }), {}, 0, policy);
    const sent: number[] = [];
    for (let i = 1; i <= 25; i++) {
      const temp = 50 + i * 0.2;
      const r = f.decide(device({ temp: Math.round(temp * 10) / 10 }), {}, i * 1000, policy);
      if (r) sent.push((r.metrics.temperature as { cpu: number }).cpu);
    }
    assert.deepEqual(sent, [51, 52, 53, 54, 55]);
  });

  it("errors ride along when they change, and an empty errors object says they cleared", () => {
    const f = new ChangeFilter();
    f.decide(device(), {}, 0, policy);
    assert.deepEqual(f.decide(device(), { "pi.throttled": "EACCES" }, 1000, policy), {
      full: false,
      metrics: {},
      errors: { "pi.throttled": "EACCES" },
    });
    assert.equal(f.decide(device(), { "pi.throttled": "EACCES" }, 2000, policy), undefined);
    // The same errors in another order (collectors finish in any order) are no change.
    f.decide(device(), { a: "1", b: "2", "pi.throttled": "EACCES" }, 2100, policy);
    assert.equal(f.decide(device(), { b: "2", "pi.throttled": "EACCES", a: "1" }, 2200, policy), undefined);
    f.decide(device(), { "pi.throttled": "EACCES" }, 2300, policy);
    assert.deepEqual(f.decide(device(), {}, 3000, policy), { full: false, metrics: {}, errors: {} });
  });

  it("rules: wildcards, the most specific wins, 0 means any change, a new metric is always sent", () => {
    const f = new ChangeFilter();
    const p: ChangePolicy = {
      deadbands: { "rails.*.watts": 0.5, "rails.VDD_IN.watts": 2, gpu: 0 },
      fullOnly: [],
      fullIntervalMs: 1e9,
      intervalMs: 1,
    };
    const m = (inW: number, socW: number, gpu: number, extra = {}) => ({
      rails: { VDD_IN: { watts: inW }, VDD_SOC: { watts: socW } },
      gpu: { load: gpu },
      ...extra,
    });
    f.decide(m(5, 1, 10), {}, 0, p);
    assert.deepEqual(f.decide(m(6.5, 1.6, 10), {}, 1, p)?.metrics, { rails: { VDD_SOC: { watts: 1.6 } } });
    assert.deepEqual(f.decide(m(7.1, 1.6, 10.1), {}, 2, p)?.metrics, {
      rails: { VDD_IN: { watts: 7.1 } },
      gpu: { load: 10.1 },
    });
    assert.deepEqual(f.decide(m(7.1, 1.6, 10.1, { fan: { rpm: 1 } }), {}, 3, p)?.metrics, { fan: { rpm: 1 } });
  });

  it("a full sample is due half an interval early: jitter never skips one, and interval = fullInterval means all full", () => {
    const f = new ChangeFilter();
    const every = { ...policy, fullIntervalMs: 50, intervalMs: 50 };
    const fulls = [0, 49.6, 99, 148.7, 199.9].map((t) => f.decide(device(), {}, t, every)?.full);
    assert.deepEqual(fulls, [true, true, true, true, true]);
    const g = new ChangeFilter();
    g.decide(device(), {}, 0, policy);
    assert.equal(g.decide(device(), {}, 54_999, policy), undefined);
    assert.equal(g.decide(device(), {}, 55_000, policy)?.full, true);
  });

  it("reset() makes the next sample full (a config change)", () => {
    const f = new ChangeFilter();
    f.decide(device(), {}, 0, policy);
    assert.equal(f.decide(device(), {}, 1, policy), undefined);
    f.reset();
    assert.equal(f.decide(device(), {}, 2, policy)?.full, true);
  });

  it("a consumer's merge: a partial over the last full gives the device's current values", () => {
    const f = new ChangeFilter();
    let state = mergeReport(undefined, f.decide(device(), {}, 0, policy) ?? {});
    const partial = f.decide(device({ temp: 60 }), { "x.y": "gone" }, 1, policy);
    state = mergeReport(state, partial ?? {});
    assert.deepEqual(state.metrics, {
      ...device(),
      temperature: { cpu: 60, zones: { "cpu-thermal": 60 } },
    });
    assert.deepEqual(state.errors, { "x.y": "gone" });
    // A message from an agent before deadbands (no `full`) replaces the state, as every sample did then.
    assert.deepEqual(mergeReport(state, { metrics: { cpu: { load: 1 } } }).metrics, { cpu: { load: 1 } });
    // A hostile partial cannot reach the prototype.
    const merged = mergeReport(state, JSON.parse('{"full":false,"metrics":{"__proto__":{"polluted":1}}}'));
    assert.equal(({} as { polluted?: number }).polluted, undefined);
    assert.equal((merged.metrics as { polluted?: number }).polluted, undefined);
  });
});
