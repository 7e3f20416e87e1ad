// Issue 24, item 6: each module's create() wiring tested alone with fakeContext() (no broker, no kernel): its
// alarms, its reaction to a new configuration, OTA's resumption, Home Assistant's marker file.
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { type AddressInfo, createServer, type Socket } from "node:net";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { homeassistantModule } from "../../src/homeassistant/module.ts";
import type { Board } from "../../src/kernel/telemetry-port.ts";
import { otaModuleFor } from "../../src/ota/module.ts";
import type { RunningRelease } from "../../src/ota/running.ts";
import { resourcesModuleFor } from "../../src/resources/module.ts";
import { tasksModule } from "../../src/tasks/module.ts";
import { telemetryModule } from "../../src/telemetry/module.ts";
import { type Fake, fakeContext } from "../helpers/fake-context.ts";
import { scriptRelease } from "../helpers/releases.ts";
import { tempDir } from "../helpers/temp.ts";
import { waitUntil } from "../helpers/wait.ts";

const fakes: Fake<unknown>[] = [];
const track = <C>(fake: Fake<C>): Fake<C> => {
  fakes.push(fake as Fake<unknown>);
  return fake;
};
after(() => {
  for (const fake of fakes) fake.close();
});

const board: Board = { kind: "raspberry-pi", model: "Raspberry Pi 4 Model B", compatible: [], source: [] };
const port = { board: () => board, intervalMs: () => 20, lastSampleAgeMs: () => 0, signed: () => false };

/** The module's describe section (an empty one when it has none). */
const described = <C>(fake: Fake<C>): Record<string, unknown> => {
  const d = fake.parts.describe?.();
  return d !== null && typeof d === "object" ? { ...d } : {};
};

async function started<C>(fake: Fake<C>): Promise<() => Promise<void>> {
  const controller = new AbortController();
  const components = fake.parts.components ?? [];
  for (const c of components) await c.start(controller.signal);
  return async () => {
    controller.abort();
    for (const c of [...components].reverse()) await c.stop();
  };
}

describe("modules against a fake context", () => {
  // The worked example of docs/architecture.md, "How to add a capability".
  it("resources: growth sustained over its windows raises resource-growth; its section is typed", async () => {
    let rss = 100 * 1024 * 1024;
    const sample = () => {
      rss += 8 * 1024 * 1024;
      return { rss, heapUsed: 1, handles: 1, workers: 0 };
    };
    const fake = track(
      fakeContext(resourcesModuleFor(sample), {
        config: { resources: { interval: "1s", windowSamples: 2, windows: 2, rssGrowth: "16MiB" } },
      }),
    );
    assert.equal(fake.ctx.config().rssGrowth, 16 * 1024 * 1024, "a size in bytes");
    const stop = await started(fake);
    try {
      const alarm = () => fake.retained.get(`${fake.ctx.topics.alarm("resource-growth")}/state`);
      await waitUntil(() => alarm()?.active === true, 20_000, "the resource-growth alarm");
      assert.deepEqual(alarm()?.growing, ["rss"]);
      const collected = await fake.ctx.collectors()[0]?.collect();
      assert.deepEqual((collected as { growing: string[] }).growing, ["rss"]);
    } finally {
      await stop();
    }
  });

  it("homeassistant: publishes configs and keeps the marker; turned off, removes both", () => {
    const fake = track(
      fakeContext(homeassistantModule, { config: { homeassistant: { discovery: true } }, telemetry: port }),
    );
    const sample = { metrics: { cpu: { load: 5, cores: [5] }, pi: { armClockMHz: 1500 } }, errors: {} };
    fake.ctx.latest.update(sample, { full: true, metrics: sample.metrics });
    const configs = [...fake.retained].filter(([t, v]) => t.startsWith("homeassistant/") && v !== null);
    assert.ok(
      configs.some(([t]) => t.endsWith("/arm_clock/config")),
      "a config per figure present",
    );
    const device = configs[0]?.[1]?.device as { model?: string } | undefined;
    assert.equal(device?.model, board.model, "the board comes through the telemetry port");
    const marker = join(fake.stateDir, "homeassistant.json");
    assert.ok(existsSync(marker));

    fake.patch({ homeassistant: { discovery: false } });
    for (const [topic] of configs) assert.equal(fake.retained.get(topic), null, `${topic} cleared`);
    // The marker goes once the removals are queued on a connected link (the next change of the values).
    fake.ctx.latest.update(sample, { full: true, metrics: sample.metrics });
    assert.equal(existsSync(marker), false);
    assert.equal(described(fake).discovery, false);
  });

  it("telemetry: reads its own section typed; a config.set reaches it", () => {
    const fake = track(fakeContext(telemetryModule, { config: { telemetry: { interval: "30s" } } }));
    assert.equal(fake.ctx.config().interval, 30_000, "milliseconds, parsed once");
    assert.equal(described(fake).interval, "30s");
    fake.patch({ telemetry: { interval: "5s" } });
    assert.equal(fake.ctx.config().interval, 5_000);
    assert.equal(described(fake).interval, "5s");
    assert.equal(fake.parts.telemetry?.intervalMs(), 5_000, "the port says the new pace");
  });

  it("tasks: a threshold rule raises its alarm at the telemetry's pace, and clears it", async () => {
    const fake = track(
      fakeContext(tasksModule, {
        config: { tasks: { define: { hot: { type: "threshold", metric: "cpu.load", above: 80, for: "0s" } } } },
        telemetry: port,
      }),
    );
    const stop = await started(fake);
    try {
      const alarms = () => fake.sent.filter((m) => m.topic === fake.ctx.topics.alarm("hot"));
      fake.ctx.latest.update({ metrics: { cpu: { load: 95 } }, errors: {} }, undefined);
      await waitUntil(() => alarms().some((m) => m.body.active === true), 5000, "the alarm raised");
      fake.ctx.latest.update({ metrics: { cpu: { load: 10 } }, errors: {} }, undefined);
      await waitUntil(() => alarms().some((m) => m.body.active === false), 5000, "the alarm cleared");
    } finally {
      await stop();
    }
  });

  describe("ota", () => {
    const opt = tempDir("outpost-fake-opt-");
    const records = join(opt, "update");
    mkdirSync(records, { recursive: true });
    const running = (release: string): RunningRelease => ({
      version: "1.0.0",
      release,
      binary: undefined,
      records,
      unitsRevision: () => 2,
      noInstaller: () => undefined,
      arch: process.arch,
    });
    const trial = (state: string, extra: Record<string, unknown> = {}) =>
      writeFileSync(
        join(records, "trial.json"),
        JSON.stringify({
          state,
          release: "1.1.0-bbbbbbbbbbbb",
          from: { name: "1.0.0-aaaaaaaaaaaa", version: "1.0.0" },
          to: { name: "1.1.0-bbbbbbbbbbbb", version: "1.1.0" },
          since: 1,
          request: "req-9",
          ...extra,
        }),
      );

    it("refuses an update before it has read where the last one stands", async () => {
      const fake = track(fakeContext(otaModuleFor(() => running("1.0.0-aaaaaaaaaaaa"))));
      const manifest = scriptRelease(join(opt, "r"), "1.2.0", "exit 0", generateKeyPairSync("ed25519").privateKey);
      await assert.rejects(fake.command("update", { manifest, source: { mqtt: true } }), /still starting/);
      assert.equal(described(fake).phase, "starting");
    });

    it("started as the release switched back to: reports the rollback with root's reason", async () => {
      trial("rolled-back", { reason: "the service failed: watchdog", at: 2 });
      const fake = track(fakeContext(otaModuleFor(() => running("1.0.0-aaaaaaaaaaaa"))));
      const stop = await started(fake);
      try {
        const update = () => fake.retained.get(fake.ctx.topics.update);
        await waitUntil(() => update()?.state === "rolled-back", 5000, "the rollback reported");
        const body = fake.retained.get(fake.ctx.topics.update);
        assert.equal(body?.reason, "the service failed: watchdog");
        assert.equal(body?.version, "1.1.0");
        // Issue 25: named by the request it answers and this start's session (an old outcome is not a new one).
        assert.equal(body?.id, "req-9");
        assert.equal(body?.session, fake.ctx.session);
        const journal = JSON.parse(readFileSync(join(fake.stateDir, "update", "journal.json"), "utf8"));
        assert.equal(journal.state, "rolled-back", "settled in the agent's journal");
        assert.equal(described(fake).phase, "idle");
      } finally {
        await stop();
      }
    });

    it("started as the release on trial: commits once healthy, and says so to root", async () => {
      trial("trial");
      const fake = track(fakeContext(otaModuleFor(() => running("1.1.0-bbbbbbbbbbbb"))));
      const stop = await started(fake);
      try {
        await waitUntil(() => fake.retained.get(fake.ctx.topics.update)?.state === "committed", 5000, "committed");
        assert.equal(fake.retained.get(fake.ctx.topics.update)?.id, "req-9");
        const request = JSON.parse(readFileSync(join(fake.stateDir, "update", "commit.request"), "utf8"));
        assert.deepEqual(request, { release: "1.1.0-bbbbbbbbbbbb", request: "req-9" });
        assert.equal(described(fake).phase, "idle");
      } finally {
        await stop();
      }
    });

    describe("a rollout's request (issue 26)", () => {
      const key = generateKeyPairSync("ed25519");
      const publicText = key.publicKey.export({ type: "spki", format: "pem" }).toString();
      const signed = scriptRelease(join(opt, "rollout"), "1.2.0", "exit 0", key.privateKey);
      const sha256 = (JSON.parse(signed.payload) as { sha256: string }).sha256;
      const config = { update: { trustedKeys: [publicText] } };
      const params = { manifest: signed, source: { http: "http://127.0.0.1:9/" }, rollout: "r-1" };
      const journal = (fake: Fake<unknown>, body: Record<string, unknown>) => {
        mkdirSync(join(fake.stateDir, "update"), { recursive: true });
        writeFileSync(join(fake.stateDir, "update", "journal.json"), JSON.stringify(body));
      };
      const acted = (fake: Fake<unknown>, request: string) => {
        mkdirSync(join(fake.stateDir, "update"), { recursive: true });
        writeFileSync(
          join(fake.stateDir, "update", "rollouts.json"),
          JSON.stringify({ entries: [{ rollout: "r-1", sha256, request, at: 1 }] }),
        );
      };

      it("already on the release (the same bytes): answers current, and nothing runs", async () => {
        const fake = track(
          fakeContext(
            otaModuleFor(() => running(`1.2.0-${sha256.slice(0, 12)}`)),
            { config },
          ),
        );
        const stop = await started(fake);
        try {
          await waitUntil(() => described(fake).phase === "idle", 5000, "idle");
          const answer = await fake.command("update", params);
          assert.deepEqual(answer, { state: "current", rollout: "r-1", version: "1.2.0", sha256 });
          assert.equal(existsSync(join(fake.stateDir, "update", "rollouts.json")), false);
        } finally {
          await stop();
        }
      });

      it("asked again with a fresh id: answers with the request it acted on and what came of it", async () => {
        const fake = track(
          fakeContext(
            otaModuleFor(() => running("1.0.0-aaaaaaaaaaaa")),
            { config },
          ),
        );
        acted(fake as Fake<unknown>, "req-0");
        journal(fake as Fake<unknown>, {
          state: "rolled-back",
          release: `1.2.0-${sha256.slice(0, 12)}`,
          from: { name: "1.0.0-aaaaaaaaaaaa", version: "1.0.0" },
          to: { name: `1.2.0-${sha256.slice(0, 12)}`, version: "1.2.0" },
          at: 5,
          request: "req-0",
          reason: "the service failed",
        });
        const answer = await fake.command("update", params, { id: "req-7" });
        assert.deepEqual(answer, {
          state: "repeat",
          rollout: "r-1",
          request: "req-0",
          last: { id: "req-0", state: "rolled-back", version: "1.2.0", from: "1.0.0", reason: "the service failed" },
        });
        // Another rollout of the same release is a new act (it reaches the busy check: the module is starting).
        await assert.rejects(fake.command("update", { ...params, rollout: "r-2" }), /still starting/);
      });

      /**
       * A device that acted on request req-0 of rollout r-1 (and what `prep` leaves), running `release`, started:
       * `body` runs, then it stops.
       */
      const afterActing = async (
        body: (fake: Fake<unknown>) => Promise<void>,
        o: {
          prep?: (fake: Fake<unknown>) => void;
          release?: string;
          health?: () => { ok: boolean; reasons: string[] };
        } = {},
      ) => {
        const fake = track(
          fakeContext(
            otaModuleFor(() => running(o.release ?? "1.0.0-aaaaaaaaaaaa")),
            { config, ...(o.health ? { health: o.health } : {}) },
          ),
        ) as Fake<unknown>;
        acted(fake, "req-0");
        o.prep?.(fake);
        const stop = await started(fake);
        try {
          await body(fake);
        } finally {
          await stop();
        }
      };
      const rolloutRecord = (fake: Fake<unknown>) =>
        JSON.parse(readFileSync(join(fake.stateDir, "update", "rollouts.json"), "utf8")) as {
          entries: { request: string; outcome?: { code?: string } }[];
        };

      it("a download that gave up installed nothing: asked again, it runs again", async () => {
        const prep = (fake: Fake<unknown>) =>
          journal(fake, {
            state: "failed",
            release: "1.2.0",
            version: "1.2.0",
            code: "OTA_DOWNLOAD_FAILED",
            reason: "the server went away",
            at: 5,
            request: "req-0",
          });
        await afterActing(
          async (fake) => {
            await waitUntil(() => described(fake).phase === "idle", 5000, "idle");
            // It runs (and fails again here: nothing listens on port 9), recorded under the new request.
            await assert.rejects(fake.command("update", params, { id: "req-7" }));
            assert.equal(rolloutRecord(fake).entries[0]?.request, "req-7");
          },
          { prep },
        );
      });

      it("restarted mid-download (nothing known of the request): it runs again", async () => {
        await afterActing(async (fake) => {
          await waitUntil(() => described(fake).phase === "idle", 5000, "idle");
          await assert.rejects(fake.command("update", params, { id: "req-8" }));
          assert.equal(rolloutRecord(fake).entries[0]?.request, "req-8");
        });
      });

      it("started after a crash cut a rollout's download: says so, naming the request, so its driver asks again", async () => {
        await afterActing(async (fake) => {
          const state = () => fake.retained.get(fake.ctx.topics.update);
          await waitUntil(() => state()?.id === "req-0", 5000, "the cut request reported");
          assert.deepEqual([state()?.state, state()?.code], ["failed", "TASK_ABORTED"]);
          assert.equal(rolloutRecord(fake).entries[0]?.outcome?.code, "TASK_ABORTED", "kept with the rollout's entry");
        });
      });

      it("stopped mid-download (a restart, a shutdown): the reply and the state say TASK_ABORTED, so its driver asks again", async () => {
        // A server that takes the connection and never answers: the download is under way when the stop comes.
        const held = new Set<Socket>();
        const silent = createServer((socket) => held.add(socket));
        await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
        const port = (silent.address() as AddressInfo).port;
        try {
          await afterActing(async (fake) => {
            await waitUntil(() => described(fake).phase === "idle", 5000, "idle");
            const stopping = new AbortController();
            const run = fake.command(
              "update",
              { ...params, source: { http: `http://127.0.0.1:${port}/` } },
              { id: "req-10", signal: stopping.signal },
            );
            await waitUntil(() => described(fake).phase === "downloading", 5000, "downloading");
            stopping.abort();
            await assert.rejects(run, (err: { code?: string }) => err.code === "TASK_ABORTED");
            const state = fake.retained.get(fake.ctx.topics.update);
            assert.deepEqual([state?.id, state?.state, state?.code], ["req-10", "failed", "TASK_ABORTED"]);
          });
        } finally {
          for (const socket of held) socket.destroy();
          silent.close();
        }
      });

      it("on trial of the release: answers where this rollout's update stands, never current", async () => {
        const name = `1.2.0-${sha256.slice(0, 12)}`;
        trial("trial", {
          release: name,
          to: { name, version: "1.2.0" },
          request: "req-0",
        });
        // Not healthy yet: the trial goes on (a healthy one would commit at the first look).
        const health = () => ({ ok: false, reasons: ["warming up"] });
        await afterActing(
          async (fake) => {
            await waitUntil(() => described(fake).phase === "trial", 5000, "on trial");
            const answer = (await fake.command("update", params, { id: "req-9" })) as Record<string, unknown>;
            assert.equal(answer.state, "repeat");
            assert.equal((answer.last as Record<string, unknown>).state, "trial");
          },
          { release: name, health },
        );
      });
    });
  });
});
