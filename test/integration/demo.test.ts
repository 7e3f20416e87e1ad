import assert from "node:assert/strict";
import { it } from "node:test";
import { AgentProcess, sourceCommand } from "../helpers/agent-process.ts";

it("demo runs an embedded broker, the agent and a live view, and stops cleanly on Ctrl-C", async () => {
  const demo = new AgentProcess(sourceCommand(), ["demo", "--interval", "300ms"], {
    env: { OUTPOST_DEVICE__ID: "demo-box" },
  });
  try {
    await demo.stdout.waitFor((l) => l.startsWith("status demo-box online"), 20_000, "online in the view");
    const line = await demo.stdout.waitFor((l) => l.startsWith("telemetry demo-box seq=2 "), 20_000, "telemetry");
    assert.match(line, /cpu=\d+(\.\d)?% mem=\d+MiB/);
    const exit = await demo.stop("SIGINT");
    assert.deepEqual(exit, { code: 0, signal: null });
    assert.ok(
      demo.stdout.items.some((l) => l.startsWith("status demo-box offline")),
      "offline shown before exit",
    );
    assert.ok(demo.stdout.items.includes("outpost demo: stopped"));
  } finally {
    await demo.cleanup();
  }
});
