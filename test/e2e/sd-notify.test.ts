// Issue 12 item 4: sd_notify from the built binaries of both arches, through the addon, received on a real
// unix datagram socket (Python's, standing in for systemd's) that reports the sender's PID.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AgentProcess, ROOT } from "../helpers/agent-process.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { Collected } from "../helpers/wait.ts";

const targets = [
  { name: "linux-x64", command: [join(ROOT, "dist", "outpost-linux-x64")], timeout: 20_000 },
  {
    name: "linux-arm64",
    command: ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", join(ROOT, "dist", "outpost-linux-arm64")],
    timeout: 90_000,
  },
];

interface Notified {
  pid: number;
  message: string;
}

describe("sd_notify from the built binaries", () => {
  let broker: Mosquitto;
  let dir: string;
  before(async () => {
    broker = await Mosquitto.start();
    dir = mkdtempSync(join(tmpdir(), "outpost-notify-"));
  });
  after(async () => {
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  for (const target of targets) {
    it(`${target.name}: READY with STATUS once connected, WATCHDOG pings, STOPPING on SIGTERM, from the agent's own PID`, async () => {
      assert.ok(existsSync(target.command.at(-1) ?? ""), "run npm run build first");
      const socket = join(dir, `${target.name}.sock`);
      const receiver = spawn("python3", [join(ROOT, "test", "fixtures", "notify-receiver.py"), socket], {
        stdio: ["ignore", "pipe", "inherit"],
      });
      const got = new Collected<Notified & { listening?: string }>();
      let buffer = "";
      receiver.stdout.on("data", (chunk: Buffer) => {
        buffer += chunk.toString();
        for (let i = buffer.indexOf("\n"); i >= 0; i = buffer.indexOf("\n")) {
          got.push(JSON.parse(buffer.slice(0, i)));
          buffer = buffer.slice(i + 1);
        }
      });
      try {
        await got.waitFor((m) => m.listening !== undefined, 10_000, "receiver listening");
        const agent = AgentProcess.run(
          target.command,
          { device: { id: `notify-${target.name}` }, mqtt: { url: `mqtt://127.0.0.1:${broker.port}` } },
          // A 400 ms watchdog: a ping every 200 ms.
          { NOTIFY_SOCKET: socket, WATCHDOG_USEC: "400000" },
        );
        try {
          const ready = await got.waitFor((m) => /^READY=1$/m.test(m.message ?? ""), target.timeout, "READY=1");
          assert.equal(ready.pid, agent.child.pid, "READY came from another process than the agent");
          assert.match(ready.message, /^STATUS=connected to 127\.0\.0\.1:\d+, outbox \d+ queued/m);
          await got.waitFor(
            (_m) => got.items.filter((n) => n.message === "WATCHDOG=1").length >= 3,
            target.timeout,
            "three watchdog pings",
          );
          assert.ok(got.items.filter((n) => n.message === "WATCHDOG=1").every((n) => n.pid === agent.child.pid));
          const stopping = got.waitFor((m) => /^STOPPING=1$/m.test(m.message ?? ""), target.timeout, "STOPPING=1");
          assert.deepEqual(await agent.stop("SIGTERM"), { code: 0, signal: null });
          await stopping;
          const described = agent.logs().find((l) => l.msg === "systemd told ready");
          assert.equal(described?.mechanism, "addon");
        } finally {
          await agent.cleanup();
        }
      } finally {
        receiver.kill();
      }
    });
  }
});
