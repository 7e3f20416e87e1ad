import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { generateKeys, parsePrivateKey } from "../src/commands/keys.ts";
import { makeRelease } from "../src/ota/release.ts";
import { ROOT } from "../test/helpers/agent-process.ts";
import { operatorKey } from "../test/helpers/commands.ts";
import type { Mosquitto } from "../test/helpers/mosquitto.ts";
import type { Received, Watch } from "../test/helpers/mqtt-watch.ts";
import { Operator, PREFIX } from "../test/helpers/operator.ts";
import { RangeServer } from "../test/helpers/range-server.ts";
import { buildVersion, scriptRelease } from "../test/helpers/releases.ts";
import { Systemd } from "../test/helpers/systemd.ts";
import type { BenchRow } from "./bench-board.ts";

const DEVICE = "bench-ota";
const MiB = 1024 * 1024;

export async function otaRows(
  rows: BenchRow[],
  o: { bin: string; broker: Mosquitto; watch: Watch; runs: number; rollbacks?: number },
) {
  mkdirSync(join(ROOT, ".cache"), { recursive: true });
  const dir = mkdtempSync(join(ROOT, ".cache", "bench-ota-"));
  const key = generateKeys();
  const privateKey = parsePrivateKey(key.privatePem);
  const ops = operatorKey();
  let sd: Systemd | undefined;
  let server: RangeServer | undefined;
  let operator: Operator | undefined;
  try {
    const built = buildVersion(join(dir, "v2-build"), "9.0.0");
    const signed = {
      up: makeRelease({
        file: built,
        privateKey,
        out: join(dir, "up"),
        kind: "agent",
        now: 1,
      }),
      // Back to the first build, which the signed manifest allows: the next round starts from it again.
      down: makeRelease({
        file: o.bin,
        privateKey,
        out: join(dir, "down"),
        kind: "agent",
        allowDowngrade: true,
        now: 1,
      }),
      exits: { signed: scriptRelease(join(dir, "exits"), "99.0.0", "exit 3", privateKey) },
    };
    server = await RangeServer.start(dir);
    operator = await Operator.open(o.broker.port, ops);
    const config = {
      device: { id: DEVICE },
      mqtt: { url: o.broker.url, reconnectMin: "50ms", reconnectMax: "500ms" },
      telemetry: { interval: "100ms" },
      commands: { trustedKeys: [{ name: "ops", key: ops.publicText, allow: ["*"] }] },
      update: { trustedKeys: [key.publicText] },
    };
    writeFileSync(join(dir, "config.json"), JSON.stringify(config));
    sd = await Systemd.boot(ROOT);
    const boot = sd;
    const installed = await boot.exec(
      [boot.path(o.bin), "install", "--config", boot.path(join(dir, "config.json"))],
      120_000,
    );
    if (installed.code !== 0) throw new Error(`install failed: ${installed.stderr}`);
    const telemetry = (m: Received) => m.topic === `${PREFIX}/${DEVICE}/telemetry`;
    await o.watch.waitFor(telemetry, 30_000, "the installed agent's telemetry");
    const when = new Map<Received, number>();
    const onItem = (m: Received) => when.set(m, performance.now());
    o.watch.on("item", onItem);

    /** Sends an update and measures the gap in telemetry, and the time to the outcome wanted. */
    const cycle = async (name: keyof typeof signed, outcome: string) => {
      const session = o.watch.items.filter(telemetry).at(-1)?.json.session;
      const from = o.watch.items.length;
      const call = await operator?.call(
        DEVICE,
        "update",
        { manifest: signed[name].signed, source: { http: server?.url(`${name}/`) } },
        { timeoutMs: 120_000 },
      );
      const reply = call?.finals[0];
      if (reply?.state !== "succeeded") throw new Error(`${name}: ${JSON.stringify(reply?.error)}`);
      const sent = server?.sent ?? 0;
      const done = await o.watch.waitFor(
        (m) => o.watch.items.indexOf(m) >= from && m.topic.endsWith("/update") && m.json.state === outcome,
        120_000,
        outcome,
      );
      const first = await o.watch.waitFor(
        (m) => o.watch.items.indexOf(m) >= from && telemetry(m) && m.json.session !== session,
        60_000,
        "telemetry of the next start",
      );
      const last = o.watch.items
        .slice(from)
        .filter((m) => telemetry(m) && m.json.session === session)
        .at(-1);
      const gap = (when.get(first) ?? 0) - (when.get(last ?? first) ?? 0);
      return {
        gap,
        firstAt: when.get(first) ?? performance.now(),
        outcome: (when.get(done) ?? 0) - (when.get(first) ?? 0),
        sent,
        fetched: Number(reply.result && (reply.result as { fetched: number }).fetched),
      };
    };

    const downtime: number[] = [];
    const toCommit: number[] = [];
    let fetched = 0;
    let size = 0;
    for (let i = 0; i < o.runs; i++) {
      const up = await cycle("up", "committed");
      downtime.push(up.gap);
      toCommit.push(up.outcome);
      fetched = up.fetched;
      size = signed.up.manifest.size;
      const down = await cycle("down", "committed");
      downtime.push(down.gap);
    }
    // Issue 22: after a rollback, is READY late or sometimes missing? From the returned release's first
    // telemetry to systemd's `active` (polled), over every rollback; one not active within 60 s counts missing.
    const rollback: number[] = [];
    const toActive: number[] = [];
    let missing = 0;
    for (let i = 0; i < (o.rollbacks ?? o.runs); i++) {
      const r = await cycle("exits", "rolled-back");
      rollback.push(r.gap);
      const deadline = performance.now() + 60_000;
      let state = await boot.show("outpost", "ActiveState");
      while (state !== "active" && performance.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 20));
        state = await boot.show("outpost", "ActiveState");
      }
      if (state === "active") toActive.push(performance.now() - r.firstAt);
      else missing += 1;
    }
    o.watch.off("item", onItem);
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN;
    const spread = (xs: number[]) => `${xs.map((x) => Math.round(x)).join(", ")} ms`;
    rows.push({
      metric: "update downtime (last telemetry of v1 to first of v2)",
      outpost: median(downtime) / 1000,
      unit: "s",
      note: `median of ${downtime.length} (up and back down): ${spread(downtime)}; telemetry every 100 ms`,
    });
    rows.push({
      metric: "  then to committed (healthy, journal written)",
      outpost: median(toCommit) / 1000,
      unit: "s",
      note: spread(toCommit),
    });
    rows.push({
      metric: "rollback of a release that exits at once",
      outpost: median(rollback) / 1000,
      unit: "s",
      note: `last telemetry of v1 to the first of v1 again, by OnFailure=: ${spread(rollback)}`,
    });
    rows.push({
      metric: "after a rollback: first telemetry to ActiveState=active",
      outpost: median(toActive) / 1000,
      unit: "s",
      note: `${toActive.length} of ${rollback.length} rollbacks active (missing ${missing}), max ${Math.round(Math.max(...toActive))} ms: ${spread(toActive)}`,
    });
    rows.push({
      metric: "update download, app-only change (installed agent)",
      outpost: fetched / MiB,
      bare: size / MiB,
      unit: "MiB",
      note: "chunks fetched by the device; bare = the whole binary",
    });
  } finally {
    await sd?.shutdown();
    await operator?.close();
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
