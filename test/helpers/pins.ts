import assert from "node:assert/strict";
import { join } from "node:path";
import type { AgentProcess } from "./agent-process.ts";
import { runCli } from "./cli.ts";

/**
 * Pins an agent's key for ctl in `file`, as scripts/deploy.sh does: the public key read where the agent wrote
 * it (its state directory), never taken from the broker. Call once the agent has started (it makes the key).
 */
export async function pinAgent(file: string, brokerUrl: string, id: string, agent: AgentProcess): Promise<void> {
  const r = await runCli([
    "ctl",
    "trust",
    id,
    "--public-key",
    join(agent.dir, "state", "device.pub"),
    "--broker",
    brokerUrl,
    "--known-devices",
    file,
  ]);
  assert.equal(r.code, 0, r.err);
}
