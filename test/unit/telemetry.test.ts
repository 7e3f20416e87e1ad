import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { pino } from "pino";
import type { Collector } from "../../src/telemetry/collectors.ts";
import { systemCollectors } from "../../src/telemetry/collectors.ts";
import { type Sample, Telemetry } from "../../src/telemetry/telemetry.ts";
import { waitUntil } from "../helpers/wait.ts";

const logger = pino({ level: "silent" });

function telemetry(collectors: Collector[], timeoutMs = 100, publish: (s: Sample) => void = () => {}) {
  return new Telemetry({ collectors, intervalMs: () => 10, timeoutMs: () => timeoutMs, publish, logger });
}

describe("telemetry sampling", () => {
  it("reports a failing and a hanging collector without losing the others", async () => {
    let release: (() => void) | undefined;
    const hanging = new Promise<void>((resolve) => {
      release = resolve;
    });
    const t = telemetry(
      [
        { name: "good", collect: async () => ({ value: 1 }) },
        {
          name: "broken",
          collect: async () => {
            throw new Error("sensor unplugged");
          },
        },
        {
          name: "slow",
          collect: async () => {
            await hanging;
            return { value: 2 };
          },
        },
        { name: "absent", collect: async () => null },
      ],
      30,
    );
    const started = performance.now();
    const first = await t.sample();
    assert.ok(performance.now() - started < 1000, "the slow collector held up the sample");
    assert.deepEqual(first.metrics, { good: { value: 1 } });
    assert.deepEqual(first.errors, { broken: "sensor unplugged", slow: "timeout after 30ms" });

    // Still running from the last cycle: not started a second time, reported as busy.
    const second = await t.sample();
    assert.match(second.errors.slow ?? "", /^busy/);
    release?.();
    await hanging;
    await new Promise((resolve) => setImmediate(resolve));
    const third = await t.sample();
    assert.deepEqual(third.metrics.slow, { value: 2 });
  });

  it("a sample asked for while the loop's collection runs waits for it and shares its result (telemetry.now)", async () => {
    // Seen in CI: `telemetry.now` on a busy machine came while the loop was reading /proc/stat, and the
    // reply had no cpu at all ("busy"). A collector with state (the cpu delta) must not run twice at once
    // either, so the second asker joins the first collection.
    let calls = 0;
    let release: (() => void) | undefined;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const t = telemetry(
      [
        {
          name: "cpu",
          collect: async () => {
            calls += 1;
            await gate;
            return { load: 7 };
          },
        },
      ],
      1000,
    );
    const loop = t.sample();
    const now = t.sample();
    release?.();
    const [a, b] = await Promise.all([loop, now]);
    assert.deepEqual([a.metrics, a.errors], [{ cpu: { load: 7 } }, {}]);
    assert.deepEqual([b.metrics, b.errors], [{ cpu: { load: 7 } }, {}]);
    assert.equal(calls, 1);
  });

  it("publishes once per interval until stopped", async () => {
    const samples: Sample[] = [];
    let enough: (() => void) | undefined;
    const done = new Promise<void>((resolve) => {
      enough = resolve;
    });
    const t = telemetry([{ name: "n", collect: async () => ({ n: samples.length }) }], 100, (s) => {
      samples.push(s);
      if (samples.length === 3) enough?.();
    });
    const controller = new AbortController();
    await t.start(controller.signal);
    await done;
    await t.stop();
    await t.stop();
    const count = samples.length;
    assert.ok(count >= 3);
    assert.deepEqual(
      samples.slice(0, 3).map((s) => s.metrics.n),
      [{ n: 0 }, { n: 1 }, { n: 2 }],
    );
    assert.equal(t.count, count);
  });

  it("times a changed interval from the last sample: no sample of its own for a change of pace", async () => {
    let intervalMs = 60_000;
    let samples = 0;
    const t = new Telemetry({
      collectors: [{ name: "n", collect: async () => ({ n: 1 }) }],
      intervalMs: () => intervalMs,
      timeoutMs: () => 100,
      publish: () => {
        samples += 1;
      },
      logger,
    });
    const controller = new AbortController();
    await t.start(controller.signal);
    try {
      await waitUntil(() => samples === 1, 5000, "the first sample");
      // Shorter, but not yet due: the loop waits out the rest of it. The old loop sampled at once.
      intervalMs = 30_000;
      t.wake();
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(samples, 1, "a change of pace is not a sample");
      // Due already (the first sample is older than 50 ms): the next one comes now.
      intervalMs = 50;
      t.wake();
      await waitUntil(() => samples >= 2, 5000, "a sample at the new pace");
    } finally {
      await t.stop();
    }
  });

  it("a cycle that overruns its interval still yields: a timer runs between cycles, not after dozens", async () => {
    let samples = 0;
    let calls = 0;
    const t = new Telemetry({
      // Synchronous work longer than the interval: nothing in the cycle itself waits for a macrotask.
      // After 12 calls it waits for a timer itself, so that a loop that never yields ends up failing, not hanging.
      collectors: [
        {
          name: "busy",
          collect: async () => {
            calls += 1;
            if (calls > 12) await new Promise((r) => setTimeout(r, 1));
            const end = performance.now() + 30;
            while (performance.now() < end);
            return { n: 1 };
          },
        },
      ],
      intervalMs: () => 20,
      timeoutMs: () => 1000,
      publish: () => {
        samples += 1;
      },
      logger,
    });
    await t.start(new AbortController().signal);
    try {
      await waitUntil(() => samples >= 1, 5000, "the first sample");
      let ranAfter: number | undefined;
      setTimeout(() => {
        ranAfter = samples;
      }, 0);
      await waitUntil(() => ranAfter !== undefined, 10_000, "the timer's turn");
      assert.ok((ranAfter ?? 0) <= samples && (ranAfter ?? 0) <= 4, `the timer waited for ${ranAfter} samples`);
    } finally {
      await t.stop();
    }
  });

  it("collects real metrics from this machine", async () => {
    const t = telemetry(systemCollectors(), 5000);
    await t.sample();
    const { metrics, errors } = await t.sample();
    assert.deepEqual(errors, {});
    const memory = metrics.memory as { total: number; used: number };
    assert.ok(memory.total > 0 && memory.used > 0 && memory.used <= memory.total);
    const cpu = metrics.cpu as { load: number; cores: number[] };
    assert.ok(cpu.load >= 0 && cpu.load <= 100);
    assert.ok(cpu.cores.length >= 1);
    assert.ok((metrics.disk as { size: number }).size > 0);
    assert.ok((metrics.uptime as { seconds: number }).seconds > 0);
    assert.ok(!("lo" in (metrics.network as Record<string, unknown>)), "loopback is not reported");
  });
});
