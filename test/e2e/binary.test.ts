import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AgentProcess, ROOT } from "../helpers/agent-process.ts";
import { runCli } from "../helpers/cli.ts";
import { PREFIX } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { Watch } from "../helpers/mqtt-watch.ts";
import { pinAgent } from "../helpers/pins.ts";
import { clientCertListener, clientFiles, clientTlsOptions, makePki } from "../helpers/pki.ts";
import { freePort } from "../helpers/ports.ts";
import { run } from "../helpers/run.ts";

const targets = [
  {
    name: "linux-x64",
    command: [join(ROOT, "dist", "outpost-linux-x64")],
    timeout: 20_000,
    board: { fixture: "jetson-orin-nano", kind: "jetson", metric: 'outpost_power_rail_watts{rail="VDD_IN"} 6.593' },
  },
  {
    name: "linux-arm64",
    command: ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", join(ROOT, "dist", "outpost-linux-arm64")],
    timeout: 90_000,
    board: {
      fixture: "pi4",
      kind: "raspberry-pi",
      metric: 'outpost_pi_throttle_flag{flag="underVoltage",when="now"} 1',
    },
  },
];

describe("built binaries", () => {
  let broker: Mosquitto;
  let watch: Watch;
  let dir: string;

  before(async () => {
    for (const t of targets) {
      const bin = t.command.at(-1) ?? "";
      assert.ok(existsSync(bin), `${bin} is missing: run npm run build first`);
    }
    broker = await Mosquitto.start();
    watch = await Watch.open(broker.port, [`${PREFIX}/#`]);
    dir = mkdtempSync(join(tmpdir(), "outpost-e2e-"));
  });
  after(async () => {
    await watch.close();
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("SHA256SUMS matches the binaries", () => {
    const sums = readFileSync(join(ROOT, "dist", "SHA256SUMS"), "utf8")
      .trim()
      .split("\n");
    assert.equal(sums.length, 2);
    const check = execFileSync("sha256sum", ["--check", "SHA256SUMS"], { cwd: join(ROOT, "dist"), encoding: "utf8" });
    assert.match(check, /outpost-linux-x64: OK/);
    assert.match(check, /outpost-linux-arm64: OK/);
  });

  for (const target of targets) {
    describe(target.name, () => {
      it("prints its version with the build's commit and the pinned Node", () => {
        const [bin, ...pre] = target.command;
        const out = execFileSync(bin ?? "", [...pre, "--version"], { encoding: "utf8", env: {} });
        const arch = target.name.replace("linux-", "");
        const commit = execFileSync("git", ["rev-parse", "--short=12", "HEAD"], { cwd: ROOT, encoding: "utf8" }).trim();
        assert.equal(out, `outpost 0.1.0 (${commit}) node v24.21.0 linux-${arch}\n`);
      });

      it("refuses a bad config with exit 78 and names the key", async () => {
        const path = join(dir, `bad-${target.name}.yaml`);
        writeFileSync(path, "telemetry:\n  interval: fast\n");
        const p = new AgentProcess(target.command, ["config", "validate", path]);
        const exit = await p.exited;
        assert.equal(exit.code, 78);
        assert.ok(
          p.stderr.items.some((l) => l.includes("telemetry.interval: expected a duration")),
          p.stderr.items.join("\n"),
        );
      });

      it("reports telemetry to mosquitto and stops on SIGTERM with exit 0 and offline retained", async () => {
        const id = `e2e-${target.name}`;
        const agent = AgentProcess.run(target.command, {
          device: { id },
          mqtt: { url: broker.url, reconnectMin: "100ms", reconnectMax: "1s" },
          telemetry: { interval: "500ms", fullInterval: "50ms", collectorTimeout: "5s" },
        });
        try {
          const online = await watch.waitFor(
            (m) => m.topic === `${PREFIX}/${id}/status` && m.json.state === "online",
            target.timeout,
            "online",
          );
          assert.equal(online.json.arch, target.name.replace("linux-", ""));
          const telemetry = await watch.waitFor(
            (m) => m.topic === `${PREFIX}/${id}/telemetry` && m.json.session === online.json.session,
            target.timeout,
            "telemetry",
          );
          assert.equal(telemetry.json.seq, 1);
          assert.ok("memory" in (telemetry.json.metrics as Record<string, unknown>));
          assert.deepEqual(await agent.stop("SIGTERM"), { code: 0, signal: null });
          const late = await Watch.open(broker.port, [`${PREFIX}/${id}/status`]);
          const retained = await late.waitFor(() => true, 5000, "retained status");
          await late.close();
          assert.equal(retained.json.state, "offline");
          assert.equal(retained.json.session, online.json.session);
        } finally {
          await agent.cleanup();
        }
      });

      it("connects over mqtts with a CA and a client certificate (MQTT.js's transports as built: ws and SOCKS left out)", async () => {
        const pki = join(dir, `pki-${target.name}`);
        mkdirSync(pki);
        makePki(pki);
        const secure = await Mosquitto.start({ listener: clientCertListener(pki) });
        const tls = clientFiles(pki);
        const seen = await Watch.open(secure.port, [`${PREFIX}/#`], clientTlsOptions(pki));
        const id = `e2e-tls-${target.name}`;
        const agent = AgentProcess.run(target.command, {
          device: { id },
          mqtt: { url: `mqtts://127.0.0.1:${secure.port}`, ...tls, reconnectMin: "100ms", reconnectMax: "1s" },
          telemetry: { interval: "500ms", fullInterval: "50ms", collectorTimeout: "5s" },
        });
        try {
          await seen.waitFor(
            (m) => m.topic === `${PREFIX}/${id}/status` && m.json.state === "online",
            target.timeout,
            "online over TLS",
          );
          await seen.waitFor((m) => m.topic === `${PREFIX}/${id}/telemetry`, target.timeout, "telemetry over TLS");
        } finally {
          await agent.stop("SIGTERM").catch(() => {});
          await agent.cleanup();
          await seen.close();
          await secure.stop();
        }
      });

      it("answers every diagnostics verb from inside the single executable (no --inspect there)", async () => {
        const id = `e2e-diag-${target.name}`;
        const made = await runCli(["keygen", "--out", join(dir, `ops-${target.name}`)]);
        const pub = /ed25519:\S+/.exec(made.out)?.[0] ?? "";
        const agent = AgentProcess.run(target.command, {
          device: { id },
          mqtt: { url: broker.url, reconnectMin: "100ms", reconnectMax: "1s" },
          commands: { trustedKeys: [{ name: "ops", key: pub, allow: ["*", "debug.heap-snapshot"] }] },
        });
        try {
          await watch.waitFor(
            (m) => m.topic === `${PREFIX}/${id}/status` && m.json.state === "online",
            target.timeout,
            "online",
          );
          const pins = join(dir, `known-${target.name}`);
          await pinAgent(pins, broker.url, id, agent);
          const flags = ["--broker", broker.url, "--key", join(dir, `ops-${target.name}.key`), "--known-devices", pins];
          const timeout = ["--timeout", `${target.timeout / 1000}s`];
          const logs = await runCli(["ctl", "logs", id, "--json", ...timeout, ...flags]);
          assert.equal(logs.code, 0, logs.err);
          assert.match(logs.out, /"msg":"agent starting"/);
          for (const kind of ["--cpu", "--heap"]) {
            const out = join(dir, `${target.name}${kind}.json`);
            const r = await runCli(["ctl", "profile", id, kind, "1s", "--out", out, ...timeout, ...flags]);
            assert.equal(r.code, 0, r.err);
            const profile = JSON.parse(readFileSync(out, "utf8")) as { nodes?: unknown[]; head?: unknown };
            assert.ok(kind === "--cpu" ? (profile.nodes?.length ?? 0) > 0 : profile.head, out);
          }
          const snapshot = join(dir, `${target.name}.heapsnapshot`);
          const snap = await runCli(["ctl", "profile", id, "--heap-snapshot", "--out", snapshot, ...timeout, ...flags]);
          assert.equal(snap.code, 0, snap.err);
          assert.ok((JSON.parse(readFileSync(snapshot, "utf8")) as { snapshot?: unknown }).snapshot);
          const bundle = join(dir, `${target.name}-diag.tar.gz`);
          const diag = await runCli(["ctl", "diag", id, "--out", bundle, ...timeout, ...flags]);
          assert.equal(diag.code, 0, diag.err);
          assert.match((await run(["tar", "-tzf", bundle])).stdout, /^describe\.json$/m);
        } finally {
          await agent.cleanup();
        }
      });

      it(`reads a ${target.board.fixture} fixture tree; serves /metrics (promtool-clean) and /healthz; Home Assistant discovery`, async () => {
        const id = `e2e-board-${target.name}`;
        const fixture = join(ROOT, "test", "fixtures", "boards", target.board.fixture);
        const port = await freePort();
        const agent = AgentProcess.run(target.command, {
          device: { id },
          mqtt: { url: broker.url, reconnectMin: "100ms", reconnectMax: "1s" },
          telemetry: {
            interval: "1s",
            collectorTimeout: "5s",
            procRoot: join(fixture, "proc"),
            sysRoot: join(fixture, "sys"),
            hostRoot: join(fixture, "host"),
          },
          http: { listen: `127.0.0.1:${port}` },
          homeassistant: { discovery: true },
        });
        try {
          const online = await watch.waitFor(
            (m) => m.topic === `${PREFIX}/${id}/status` && m.json.state === "online",
            target.timeout,
            "online",
          );
          assert.equal((online.json.board as { kind: string }).kind, target.board.kind);
          const sample = await watch.waitFor(
            (m) => m.topic === `${PREFIX}/${id}/telemetry`,
            target.timeout,
            "telemetry",
          );
          assert.equal(sample.json.full, true);
          assert.ok(
            target.board.kind === "jetson"
              ? "jetson" in (sample.json.metrics as object)
              : "pi" in (sample.json.metrics as object),
          );
          const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
          assert.ok(text.includes(`\n${target.board.metric}\n`), `missing ${target.board.metric}`);
          const file = join(dir, `metrics-${target.name}.txt`);
          writeFileSync(file, text);
          const lint = await run(["sh", "-c", `promtool check metrics < ${file}`]);
          assert.deepEqual([lint.code, lint.stdout + lint.stderr], [0, ""]);
          const health = await fetch(`http://127.0.0.1:${port}/healthz`);
          assert.deepEqual([health.status, await health.json()], [200, { ok: true, reasons: [] }]);
          // Retained discovery configs name the board's model as the device's.
          const ha = await Watch.open(broker.port, [`homeassistant/+/outpost_${id}/+/config`]);
          try {
            const config = await ha.waitFor((m) => m.topic.endsWith("/online/config"), target.timeout, "discovery");
            assert.equal(
              (config.json.device as { model: string }).model,
              (online.json.board as { model: string }).model,
            );
          } finally {
            await ha.close();
          }
          assert.deepEqual(await agent.stop("SIGTERM"), { code: 0, signal: null });
        } finally {
          await agent.cleanup();
        }
      });
    });
  }
});
