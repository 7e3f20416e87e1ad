import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AgentProcess, ROOT } from "../helpers/agent-process.ts";
import { PREFIX } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { Watch } from "../helpers/mqtt-watch.ts";

const targets = [
  { name: "linux-x64", command: [join(ROOT, "dist", "outpost-linux-x64")], timeout: 20_000 },
  {
    name: "linux-arm64",
    command: ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", join(ROOT, "dist", "outpost-linux-arm64")],
    timeout: 90_000,
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
          telemetry: { interval: "500ms", collectorTimeout: "5s" },
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
    });
  }
});
