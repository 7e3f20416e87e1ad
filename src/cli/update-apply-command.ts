import { readFileSync, realpathSync } from "node:fs";
import { basename, dirname } from "node:path";
import { parseArgs } from "node:util";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { MAX_LIST, publicKeySchema } from "../config/schema.ts";
import { errorMessage, OutpostError } from "../core/errors.ts";
import { applyUpdate, type RefreshedFile } from "../ota/install.ts";
import { serviceUid, systemTool } from "../service/install.ts";
import { LAYOUT, rollbackScript, updateUnits } from "../service/unit.ts";
import { VERSION } from "../version.ts";
import { EXIT, type Host } from "./host.ts";

export const UPDATE_APPLY_HELP = `Usage: outpost update-apply [--config FILE]

Run as root by outpost-update.service (docs/ota.md), not by hand: verifies the update the agent staged in
its state directory against update.trustedKeys of the config file, installs it into ${LAYOUT.releases},
switches ${LAYOUT.current} and restarts the service on trial; after a trial passed, ends it, prunes old
releases and brings the rollback script and the update units up to this release's. Exit 1 when the staged
update was refused (${LAYOUT.updateRecords}/request.json says why).`;

/**
 * All that root takes from the configuration: who may sign releases and where the agent's state is. No other
 * file the configuration names is opened (a password, CA or key file could sit in the agent's directory), and
 * the rest of the file is not validated here: the agent does that.
 */
const rootView = z.looseObject({
  update: z.looseObject({ trustedKeys: z.array(publicKeySchema).max(MAX_LIST).default([]) }).prefault({}),
  state: z
    .looseObject({ dir: z.string().regex(/^\//, "expected an absolute path").default(LAYOUT.state) })
    .prefault({}),
});

export function readRootView(path: string): z.output<typeof rootView> {
  let raw: unknown;
  try {
    raw = parseYaml(readFileSync(path, "utf8"));
  } catch (err) {
    throw new OutpostError("CONFIG_INVALID", `${path}: ${errorMessage(err)}`);
  }
  const parsed = rootView.safeParse(raw ?? {});
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`);
    throw new OutpostError("CONFIG_INVALID", `${path}: ${lines.join("; ")}`);
  }
  return parsed.data;
}

/** The root files each release carries and a commit brings up to date (docs/ota.md, "Unit files themselves"). */
export function refreshedFiles(): RefreshedFile[] {
  const units = updateUnits();
  return [
    { path: LAYOUT.rollbackScript, content: rollbackScript(), mode: 0o755 },
    ...(Object.keys(units) as (keyof typeof units)[]).map((k) => ({ path: LAYOUT[k], content: units[k], mode: 0o644 })),
  ];
}

export function updateApplyCommand(host: Host, args: string[]): number {
  const { values } = parseArgs({ args, options: { config: { type: "string" } }, allowPositionals: false });
  if (host.uid !== 0) throw new OutpostError("INSTALL_REFUSED", "update-apply must run as root");
  // The file only, as the service reads it: the environment of this unit is not the agent's.
  const config = readRootView(values.config ?? LAYOUT.config);
  const exe = host.executable ? realpathSync(host.executable) : undefined;
  const self = exe && dirname(dirname(exe)) === LAYOUT.releases ? basename(dirname(exe)) : undefined;
  const result = applyUpdate({
    opt: LAYOUT.opt,
    records: LAYOUT.updateRecords,
    stateDir: config.state.dir,
    serviceUid: serviceUid(),
    trialDropIn: LAYOUT.trialDropIn,
    trustedKeys: config.update.trustedKeys,
    version: VERSION,
    arch: process.arch,
    ...(self ? { self } : {}),
    refresh: refreshedFiles(),
    now: () => Date.now(),
    systemctl: (a) => systemTool("systemctl", a),
    log: (line) => host.stdout.write(`${line}\n`),
  });
  return result.refused === undefined ? EXIT.OK : EXIT.FAILURE;
}
