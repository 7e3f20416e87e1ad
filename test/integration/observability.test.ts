// Issue 14: board figures, change-aware reporting, retained alarm states, /metrics and /healthz, and Home
// Assistant discovery, in-process against a real mosquitto, reading a Pi 4 fixture tree as the host.

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { cpSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { pino } from "pino";
import { stringify } from "yaml";
import { createAgent } from "../../src/agent.ts";
import { systemClock } from "../../src/core/clock.ts";
import { openConfigStore } from "../../src/schema.ts";
import { operatorKey } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { type Received, Watch } from "../helpers/mqtt-watch.ts";
import { Operator, PREFIX } from "../helpers/operator.ts";
import { freePort } from "../helpers/ports.ts";
import { run } from "../helpers/run.ts";

const ops = operatorKey();
const FIXTURES = join(import.meta.dirname, "..", "fixtures", "boards");

async function until<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("board telemetry, deadbands, alarms, /metrics, /healthz, Home Assistant", () => {
  let broker: Mosquitto;
  let operator: Operator;
  const dirs: string[] = [];
  const watches: Watch[] = [];
  before(async () => {
    broker = await Mosquitto.start();
    operator = await Operator.open(broker.port, ops);
  });
  after(async () => {
    for (const w of watches) await w.close();
    await operator.close();
    await broker.stop();
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });

  async function watch(topics: string[]): Promise<Watch> {
    const w = await Watch.open(broker.port, topics);
    watches.push(w);
    return w;
  }

  /** A writable Pi 4 tree and an agent reading it; `state` may be shared by a later agent. */
  function agent(id: string, extra: Record<string, unknown> = {}, reuse?: { dir: string; board: string }) {
    const dir = reuse?.dir ?? mkdtempSync(join(tmpdir(), "outpost-obs-"));
    if (!reuse) dirs.push(dir);
    const board = reuse?.board ?? join(dir, "board");
    if (!reuse) cpSync(join(FIXTURES, "pi4"), board, { recursive: true });
    const path = join(dir, "config.yaml");
    writeFileSync(
      path,
      stringify({
        device: { id },
        mqtt: { url: broker.url, reconnectMin: "50ms", reconnectMax: "300ms" },
        state: { dir: join(dir, "state") },
        commands: { trustedKeys: [{ name: "ops", key: ops.publicText, allow: ["*"] }] },
        ...extra,
        telemetry: {
          interval: "100ms",
          procRoot: join(board, "proc"),
          sysRoot: join(board, "sys"),
          hostRoot: join(board, "host"),
          ...(extra.telemetry as object | undefined),
        },
      }),
    );
    const configStore = openConfigStore({ path, env: {}, hostname: "h" });
    const kernel = createAgent({ configStore, logger: pino({ level: "silent" }), clock: systemClock });
    return { kernel, dir, board };
  }

  it("a full sample, then only what moved; board figures by name; the status names the board", async () => {
    const w = await watch([`${PREFIX}/dev-delta/#`]);
    const { kernel, board } = agent("dev-delta", { telemetry: { fullInterval: "3s" } });
    const thermal = join(board, "sys", "class", "thermal", "thermal_zone0", "temp");
    const telemetry = (m: Received) => m.topic === `${PREFIX}/dev-delta/telemetry`;
    try {
      await kernel.start();
      const status = await w.waitFor(
        (m) => m.topic === `${PREFIX}/dev-delta/status` && m.json.state === "online",
        10_000,
        "online",
      );
      assert.deepEqual(status.json.board, { kind: "raspberry-pi", model: "Raspberry Pi 4 Model B Rev 1.4" });
      const full = await w.waitFor(telemetry, 10_000, "the first telemetry");
      assert.equal(full.json.full, true);
      const metrics = full.json.metrics as Record<string, Record<string, unknown>>;
      assert.deepEqual(metrics.pi?.now, {
        underVoltage: true,
        armFrequencyCapped: false,
        throttled: true,
        softTempLimit: false,
      });
      assert.deepEqual(metrics.restarts, { starts: 1, unclean: 0 });
      assert.ok(metrics.uptime && metrics.network && metrics.statefs, "a full sample has everything");
      // Ten samples of a board that does not change: hardly anything is sent, and never a counter.
      await new Promise((r) => setTimeout(r, 1000));
      const quiet = w.items.filter(telemetry).slice(1);
      assert.ok(quiet.length <= 3, `a quiet second sent ${quiet.length} partial samples`);
      for (const m of quiet) {
        assert.equal(m.json.full, false);
        const keys = Object.keys(m.json.metrics as object);
        for (const counter of ["uptime", "network", "commands"])
          assert.ok(!keys.includes(counter), `${counter} in a partial`);
      }
      // The SoC warms by 2 °C: the next partial carries the temperature and nothing the board kept.
      writeFileSync(thermal, "49712\n");
      const warmer = await w.waitForNext(
        (m) =>
          telemetry(m) &&
          m.json.full === false &&
          (m.json.metrics as { temperature?: unknown }).temperature !== undefined,
        5000,
        "a partial with the new temperature",
      );
      assert.deepEqual((warmer.json.metrics as { temperature: unknown }).temperature, {
        cpu: 49.7,
        zones: { "cpu-thermal": 49.7 },
      });
      assert.equal((warmer.json.metrics as { pi?: unknown }).pi, undefined);
      // And a full sample again once fullInterval has passed.
      const again = await w.waitForNext((m) => telemetry(m) && m.json.full === true, 6000, "the next full sample");
      assert.equal((again.json.metrics as { temperature: { cpu: number } }).temperature.cpu, 49.7);
    } finally {
      await kernel.stop();
    }
  });

  it("alarms are retained states: a dashboard that subscribes after the alarm sees it; clearing it is seen too", async () => {
    const { kernel, board } = agent("dev-alarm");
    const events = await watch([`${PREFIX}/dev-alarm/alarms/#`]);
    try {
      await kernel.start();
      const raised = await events.waitFor(
        (m) => m.topic === `${PREFIX}/dev-alarm/alarms/under-voltage`,
        10_000,
        "the under-voltage event",
      );
      assert.equal(raised.json.active, true);
      assert.match(String(raised.json.reason), /below/);
      // A dashboard started now gets the state at once, retained.
      const late = await watch([`${PREFIX}/dev-alarm/alarms/+/state`]);
      const state = await late.waitFor((m) => m.topic.endsWith("/under-voltage/state"), 5000, "the retained state");
      assert.equal(state.retain, true);
      assert.equal(state.json.active, true);
      assert.equal(
        (await late.waitFor((m) => m.topic.endsWith("/throttled/state"), 5000, "throttled")).json.active,
        true,
      );
      // The supply recovers: events say so once, the retained state follows.
      writeFileSync(join(board, "sys", "devices", "platform", "soc", "soc:firmware", "get_throttled"), "50000\n");
      await events.waitFor(
        (m) => m.topic.endsWith("/alarms/under-voltage") && m.json.active === false,
        5000,
        "cleared",
      );
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(
        events.items.filter((m) => m.topic.endsWith("/alarms/under-voltage")).length,
        2,
        "one event per change",
      );
      const later = await watch([`${PREFIX}/dev-alarm/alarms/under-voltage/state`]);
      const cleared = await later.waitFor(() => true, 5000, "the retained state after clearing");
      assert.deepEqual([cleared.retain, cleared.json.active], [true, false]);
    } finally {
      await kernel.stop();
    }
  });

  it("/metrics passes promtool and a real Prometheus scrapes it; /healthz follows the broker", async () => {
    const port = await freePort();
    const { kernel, dir } = agent("dev-prom", { http: { listen: `127.0.0.1:${port}` } });
    let prometheus: ChildProcess | undefined;
    try {
      await kernel.start();
      const base = `http://127.0.0.1:${port}`;
      await until("a sample in /metrics", 10_000, async () => {
        const text = await (await fetch(`${base}/metrics`)).text();
        return text.includes("outpost_pi_arm_clock_hertz 1500000000") ? text : undefined;
      });
      await operator.final("dev-prom", "ping");
      const res = await fetch(`${base}/metrics`);
      assert.equal(res.status, 200);
      assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
      const text = await res.text();
      for (const line of [
        'outpost_board_info{kind="raspberry-pi",model="Raspberry Pi 4 Model B Rev 1.4"} 1',
        'outpost_pi_throttle_flag{flag="underVoltage",when="now"} 1',
        'outpost_pi_throttle_flag{flag="softTempLimit",when="since_boot"} 0',
        'outpost_temperature_celsius{zone="cpu-thermal"} 47.7',
        'outpost_network_receive_bytes_total{interface="eth0"} 918273645',
        "outpost_memory_total_bytes 3978682368",
        "outpost_mqtt_connected 1",
        'outpost_commands_total{outcome="executed"} 1',
        'outpost_command_duration_seconds_count{command="ping",state="succeeded"} 1',
        'outpost_outbox_dropped_messages_total{class="telemetry",reason="expired"} 0',
      ]) {
        assert.ok(text.includes(`\n${line}\n`), `missing: ${line}`);
      }
      const file = join(dir, "metrics.txt");
      writeFileSync(file, text);
      const lint = await run(["sh", "-c", `promtool check metrics < ${file}`]);
      assert.deepEqual([lint.code, lint.stdout + lint.stderr], [0, ""], "promtool check metrics");

      // A real Prometheus scrapes the listener and stores what it read.
      const promPort = await freePort();
      writeFileSync(
        join(dir, "prometheus.yml"),
        stringify({
          scrape_configs: [
            { job_name: "outpost", scrape_interval: "1s", static_configs: [{ targets: [`127.0.0.1:${port}`] }] },
          ],
        }),
      );
      prometheus = spawn(
        "prometheus",
        [
          `--config.file=${join(dir, "prometheus.yml")}`,
          `--storage.tsdb.path=${join(dir, "tsdb")}`,
          `--web.listen-address=127.0.0.1:${promPort}`,
        ],
        { stdio: "ignore" },
      );
      const query = async (q: string) => {
        const r = (await (
          await fetch(`http://127.0.0.1:${promPort}/api/v1/query?query=${encodeURIComponent(q)}`)
        ).json()) as {
          data: { result: { value: [number, string] }[] };
        };
        return r.data.result[0]?.value[1];
      };
      assert.equal(await until("Prometheus to scrape the agent", 30_000, () => query('up{job="outpost"}')), "1");
      assert.equal(
        await until("the ARM clock in Prometheus", 10_000, () => query("outpost_pi_arm_clock_hertz")),
        "1500000000",
      );

      const health = async () => {
        const r = await fetch(`${base}/healthz`);
        return { status: r.status, body: (await r.json()) as { ok: boolean; reasons: string[] } };
      };
      assert.deepEqual(await health(), { status: 200, body: { ok: true, reasons: [] } });
      // Three outages: 503 saying why while the broker is gone, 200 again after each reconnect.
      for (let i = 0; i < 3; i++) {
        await broker.halt();
        const down = await until("503", 10_000, async () => {
          const h = await health();
          return h.status === 503 ? h : undefined;
        });
        assert.ok(
          down.body.reasons.some((r) => /not connected/.test(r)),
          JSON.stringify(down.body),
        );
        await broker.resume();
        await until("200 again", 10_000, async () => ((await health()).status === 200 ? true : undefined));
      }
      assert.equal((await fetch(`${base}/nope`)).status, 404);
      assert.equal((await fetch(`${base}/metrics`, { method: "POST" })).status, 405);
    } finally {
      prometheus?.kill();
      await kernel.stop();
    }
  });

  it("Home Assistant: retained configs and merged state; removed when turned off, and at a start with it off", async () => {
    const a = agent("dev-ha", { homeassistant: { discovery: true } });
    const configs = (w: Watch) =>
      w.items.filter((m) => m.topic.startsWith("homeassistant/") && m.topic.endsWith("/config"));
    try {
      await a.kernel.start();
      const first = await watch(["homeassistant/#"]);
      await first.waitFor((m) => m.topic.endsWith("/under_voltage/config"), 10_000, "the under-voltage config");
      // A Home Assistant that connects now gets everything retained.
      const ha = await watch(["homeassistant/#", `${PREFIX}/dev-ha/state`]);
      await ha.waitFor((m) => m.topic.endsWith("/under_voltage/config"), 10_000, "the retained under-voltage config");
      const state = await ha.waitFor((m) => m.topic === `${PREFIX}/dev-ha/state`, 10_000, "the merged state");
      assert.equal(state.retain, true);
      assert.equal((state.json.metrics as { pi: { armClockMHz: number } }).pi.armClockMHz, 1500);
      const topics = new Set(configs(ha).map((m) => m.topic));
      assert.ok(topics.has("homeassistant/binary_sensor/outpost_dev-ha/online/config"));
      assert.ok(topics.has("homeassistant/sensor/outpost_dev-ha/temperature/config"));
      assert.ok(configs(ha).every((m) => m.retain && m.json.unique_id));

      // Turned off by config.set: every config and the state topic are emptied. (A fresh operator: the
      // shared one lost its subscriptions to the outages of the test before.)
      const op = await Operator.open(broker.port, ops);
      await op
        .final("dev-ha", "config.set", { patch: { homeassistant: { discovery: false } } })
        .finally(() => op.close());
      await until("every config removed", 5000, async () => {
        const emptied = new Set(ha.items.filter((m) => m.text === "").map((m) => m.topic));
        return [...topics, `${PREFIX}/dev-ha/state`].every((t) => emptied.has(t)) ? true : undefined;
      });
      const after = await watch(["homeassistant/#"]);
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(configs(after).filter((m) => m.text !== "").length, 0, "nothing left retained");
    } finally {
      await a.kernel.stop();
    }
    // Discovery on in the file, then a start with it off in the file: the configs of the earlier run go.
    const c = agent("dev-ha2", { homeassistant: { discovery: true } });
    try {
      await c.kernel.start();
      const w = await watch(["homeassistant/+/outpost_dev-ha2/#"]);
      await w.waitFor((m) => m.topic.endsWith("/temperature/config") && m.text !== "", 10_000, "configs of dev-ha2");
    } finally {
      await c.kernel.stop();
    }
    const d = agent("dev-ha2", {}, { dir: c.dir, board: c.board });
    try {
      await d.kernel.start();
      await until("no config of dev-ha2 retained after a start with discovery off", 10_000, async () => {
        const w = await watch(["homeassistant/+/outpost_dev-ha2/#"]);
        await new Promise((r) => setTimeout(r, 300));
        return configs(w).every((m) => m.text === "") ? true : undefined;
      });
    } finally {
      await d.kernel.stop();
    }
  });
});
