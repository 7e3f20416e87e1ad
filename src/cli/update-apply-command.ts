import { parseArgs } from "node:util";
import { loadConfig } from "../config/load.ts";
import { OutpostError } from "../core/errors.ts";
import { applyUpdate } from "../ota/install.ts";
import { systemTool } from "../service/install.ts";
import { LAYOUT } from "../service/unit.ts";
import { VERSION } from "../version.ts";
import { EXIT, type Host } from "./host.ts";

export const UPDATE_APPLY_HELP = `Usage: outpost update-apply [--config FILE]

Run as root by outpost-update.service (docs/ota.md), not by hand: verifies the update the agent staged in
its state directory against update.trustedKeys of the config file, installs it into ${LAYOUT.releases},
switches ${LAYOUT.current} and restarts the service on trial; after a trial passed, ends it and prunes old
releases. Exit 1 when the staged update was refused (the journal says why).`;

export function updateApplyCommand(host: Host, args: string[]): number {
  const { values } = parseArgs({ args, options: { config: { type: "string" } }, allowPositionals: false });
  if (host.uid !== 0) throw new OutpostError("INSTALL_REFUSED", "update-apply must run as root");
  // The file only, as the service reads it: the environment of this unit is not the agent's.
  const { config } = loadConfig({
    path: values.config ?? LAYOUT.config,
    required: true,
    env: {},
    hostname: host.hostname,
  });
  const result = applyUpdate({
    opt: LAYOUT.opt,
    stateDir: config.state.dir,
    trialDropIn: LAYOUT.trialDropIn,
    trustedKeys: config.update.trustedKeys,
    version: VERSION,
    arch: process.arch,
    now: () => Date.now(),
    systemctl: (a) => systemTool("systemctl", a),
    log: (line) => host.stdout.write(`${line}\n`),
  });
  return result.refused === undefined ? EXIT.OK : EXIT.FAILURE;
}
