import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AgentProcess, sourceCommand } from "../helpers/agent-process.ts";
import { PREFIX } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { Watch } from "../helpers/mqtt-watch.ts";
import { FaultProxy } from "../helpers/proxy.ts";
import { tempDir } from "../helpers/temp.ts";

describe("shutdown and logging", () => {
  let broker: Mosquitto;
  let watch: Watch;
  before(async () => {
    broker = await Mosquitto.start();
    watch = await Watch.open(broker.port, [`${PREFIX}/+/status`]);
  });
  after(async () => {
    await watch.close();
    await broker.stop();
  });

  /** An agent whose link goes silent, so that its clean stop (the offline publish) hangs. */
  async function stuckAgent(id: string, extra: Record<string, unknown> = {}) {
    const proxy = await FaultProxy.start(broker.port);
    const agent = AgentProcess.run(sourceCommand(), {
      device: { id },
      mqtt: { url: `mqtt://127.0.0.1:${proxy.port}`, keepalive: "60s" },
      ...extra,
    });
    await watch.waitFor((m) => m.topic === `${PREFIX}/${id}/status` && m.json.state === "online", 15_000, "online");
    proxy.blackhole();
    return { agent, proxy };
  }

  it("exits 1 at once on a second signal during the drain", async () => {
    const { agent, proxy } = await stuckAgent("dev-twice");
    try {
      agent.child.kill("SIGTERM");
      await agent.waitForLog("agent stopping");
      agent.child.kill("SIGTERM");
      const exit = await agent.exited;
      assert.equal(exit.code, 1);
      assert.ok(agent.stderr.items.some((l) => l.includes("second SIGTERM")));
    } finally {
      await agent.cleanup();
      await proxy.close();
    }
  });

  it("exits 1 when the drain misses shutdown.deadline", async () => {
    const { agent, proxy } = await stuckAgent("dev-deadline", { shutdown: { deadline: "300ms" } });
    try {
      const started = performance.now();
      const exit = await agent.stop("SIGTERM");
      assert.equal(exit.code, 1);
      assert.ok(performance.now() - started < 1900, "it waited for the link instead of the deadline");
      assert.ok(
        agent
          .logs()
          .some(
            (l) =>
              l.level === "fatal" && String((l.err as { message?: string })?.message).includes("shutdown took longer"),
          ),
      );
    } finally {
      await agent.cleanup();
      await proxy.close();
    }
  });

  it("logs JSON lines with a child logger per component, or pretty lines on request", async () => {
    const json = AgentProcess.run(sourceCommand(), { device: { id: "dev-log" }, mqtt: { url: broker.url } });
    try {
      await json.waitForLog("mqtt connected");
      const connected = json.logs().find((l) => l.msg === "mqtt connected");
      assert.equal(connected?.component, "mqtt");
      assert.equal(connected?.level, "info");
      assert.equal(typeof connected?.time, "string");
    } finally {
      await json.cleanup();
    }
    const pretty = new AgentProcess(sourceCommand(), ["run", "--log-format", "pretty"], {
      env: {
        OUTPOST_MQTT__URL: broker.url,
        OUTPOST_DEVICE__ID: "dev-pretty",
        OUTPOST_STATE__DIR: join(tempDir("outpost-pretty-"), "state"),
      },
    });
    try {
      const line = await pretty.stdout.waitFor((l) => l.includes("mqtt connected"), 15_000, "pretty line");
      assert.match(line, /^\[\d\d:\d\d:\d\d\.\d{3}\] INFO: mqtt connected$/);
    } finally {
      await pretty.cleanup();
    }
  });
});
