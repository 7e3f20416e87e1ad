import assert from "node:assert/strict";
import { join } from "node:path";
import type { AgentProcess } from "./agent-process.ts";
import { runCli } from "./cli.ts";

/**
 * Pins a device's key for ctl in `file` through `brokerUrl` (a list too), as scripts/deploy.sh does: the public
 * key read from a file the device wrote, never taken from the broker.
 */
export async function pinKey(file: string, brokerUrl: string, id: string, publicKeyFile: string): Promise<void> {
  const r = await runCli([
    "ctl",
    "trust",
    id,
    "--public-key",
    publicKeyFile,
    "--broker",
    brokerUrl,
    "--known-devices",
    file,
  ]);
  assert.equal(r.code, 0, r.err);
}

/** Pins an agent's key, read where it wrote it (its state directory). Call once it has started (it makes the key). */
export async function pinAgent(file: string, brokerUrl: string, id: string, agent: AgentProcess): Promise<void> {
  await pinKey(file, brokerUrl, id, join(agent.dir, "state", "device.pub"));
}
