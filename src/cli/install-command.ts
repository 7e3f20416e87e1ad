import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { parse } from "yaml";
import { type ConfigProblem, formatProblems } from "../config/problems.ts";
import { sleep } from "../core/clock.ts";
import { errorMessage, isOutpostError, OutpostError } from "../core/errors.ts";
import { loadAgentConfig } from "../schema.ts";
import {
  apply,
  type Change,
  checkArchitecture,
  deviceKey,
  installPlan,
  remove,
  secretAccess,
  serviceUid,
  systemTool,
  uninstallPaths,
} from "../service/install.ts";
import { LAYOUT, UNIT_DEFAULTS } from "../service/unit.ts";
import { VERSION } from "../version.ts";
import { EXIT, type Host, UsageError } from "./host.ts";

export const INSTALL_HELP = `Usage: sudo outpost install [--config FILE] [--root DIR] [--no-start]
                            [--memory-max SIZE] [--watchdog-sec N]
       sudo outpost uninstall [--root DIR] [--purge]

install lays this binary out as a systemd service, and does nothing that is already done:
  ${LAYOUT.releases}/<version>-<sha12>/outpost   this binary (${LAYOUT.current} and
                                                   ${LAYOUT.previous} link to releases)
  ${LAYOUT.bin} -> ${LAYOUT.current}/outpost
  ${LAYOUT.config}   from --config (validated first), else kept, else a commented example
  ${LAYOUT.state}    the state directory, owned by the ${LAYOUT.user} user
  ${LAYOUT.unit} (enabled), ${LAYOUT.sysusers}, ${LAYOUT.tmpfiles}
  outpost-update.{path,service}, outpost-rollback.{path,service} and ${LAYOUT.rollbackScript}: the
                       privileged half of an over-the-air update (docs/ota.md)
then creates the ${LAYOUT.user} user, fixes ownership (a state directory made by hand as root included), lets
the service user read the files the config names, and starts (or restarts) the service.

  --config FILE        install this config file
  --root DIR           install into a directory tree (image builders, tests): only files and links are
                       written under DIR; the user and ownership are left to sysusers.d and tmpfiles.d at boot
  --no-start           enable the service but do not start it
  --memory-max SIZE    the unit's MemoryMax (default ${UNIT_DEFAULTS.memoryMax})
  --watchdog-sec N     the unit's WatchdogSec (default ${UNIT_DEFAULTS.watchdogSec})

uninstall stops and disables the service and removes the unit and the binaries; --purge also removes
${LAYOUT.etc} and ${LAYOUT.state}.`;

/** Every section commented out; each stays valid YAML when uncommented (the file has no other content). */
export const EXAMPLE_CONFIG = `# Outpost configuration: every key, its default and its meaning in \`outpost config schema\`.
# Check a change with \`outpost config validate ${LAYOUT.config}\`, then \`systemctl reload outpost\`.
# Uncomment a section and edit it; a file of comments only means the defaults.
#
# device:
#   id: pi-line-3                  # default: the hostname
# mqtt:
#   url: mqtts://broker.example.net:8883
#   username: pi-line-3
#   passwordFile: /etc/outpost/mqtt.password
#   ca: /etc/outpost/ca.pem
# telemetry:
#   interval: 10s
# commands:
#   trustedKeys:                   # outpost keygen --out ~/.outpost/ops prints this line
#     - { name: ops, key: "<contents of ops.pub>", allow: ["*"] }
# update:
#   trustedKeys:                   # outpost keygen --release --out ~/.outpost/release prints this line
#     - "<contents of release.pub>"
`;

export async function installCommand(host: Host, verb: "install" | "uninstall", args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: "string" },
      root: { type: "string" },
      "no-start": { type: "boolean" },
      purge: { type: "boolean" },
      "memory-max": { type: "string" },
      "watchdog-sec": { type: "string" },
    },
    allowPositionals: false,
  });
  const root = resolve(values.root ?? "/");
  const system = root === "/";
  if (system) {
    if (host.uid !== 0) throw new OutpostError("INSTALL_REFUSED", `${verb} must run as root: sudo outpost ${verb}`);
    if (!existsSync("/run/systemd/system")) {
      throw new OutpostError("INSTALL_REFUSED", "systemd is not running here (no /run/systemd/system)");
    }
  }
  const report = (changes: Change[]) => {
    const done = changes.filter((c) => c.action !== "unchanged" || c.note !== undefined);
    for (const c of done) host.stdout.write(`${c.action.padEnd(9)} ${c.path}${c.note ? `  (${c.note})` : ""}\n`);
    if (done.length === 0) host.stdout.write("nothing to change\n");
    return changes.some((c) => c.action !== "unchanged");
  };

  if (verb === "uninstall") {
    if (system && existsSync(join(root, LAYOUT.unit))) {
      systemTool("systemctl", ["disable", "--now", ...UNITS]);
    }
    const changed = report(remove(root, uninstallPaths(values.purge === true)));
    if (system && changed) systemTool("systemctl", ["daemon-reload"]);
    return EXIT.OK;
  }

  const binary = host.executable;
  if (binary === undefined) {
    throw new UsageError("install copies the built binary: run it as dist/outpost-linux-<arch> install");
  }
  checkArchitecture(root, binary);
  const watchdogSec = Number(values["watchdog-sec"] ?? UNIT_DEFAULTS.watchdogSec);
  if (!Number.isInteger(watchdogSec) || watchdogSec < 2) throw new UsageError("--watchdog-sec must be 2 or more");
  const memoryMax = values["memory-max"] ?? UNIT_DEFAULTS.memoryMax;
  if (!/^(\d+[KMG]?|infinity)$/.test(memoryMax)) throw new UsageError(`--memory-max: ${memoryMax} (write 384M, 1G)`);

  // A config given is checked before anything is written; the one that will be used names the secrets.
  if (values.config !== undefined) {
    const problems = configProblems(values.config, host.hostname, system);
    if (problems.length > 0) {
      host.stderr.write(`outpost: invalid configuration, nothing installed\n`);
      for (const line of formatProblems(problems)) host.stderr.write(`  ${line}\n`);
      return EXIT.CONFIG;
    }
  }
  const configPath = values.config ?? join(root, LAYOUT.config);
  const secrets = existsSync(configPath) ? namedFiles(configPath) : [];
  const access = secretAccess(root, secrets);

  const plan = installPlan(
    { root, binary, version: VERSION, config: values.config, unit: { memoryMax, watchdogSec } },
    EXAMPLE_CONFIG,
    access.lines,
  );
  const changed = report(apply(root, plan));
  for (const note of access.notes) host.stdout.write(`note      ${note}\n`);
  if (!system) return EXIT.OK;

  systemTool("systemd-sysusers", [LAYOUT.sysusers]);
  systemTool("systemd-tmpfiles", ["--create", LAYOUT.tmpfiles]);
  systemTool("systemctl", ["daemon-reload"]);
  if (values["no-start"] !== true) {
    systemTool("systemctl", ["start", "outpost-update.path", "outpost-rollback.path"]);
    systemTool("systemctl", [changed ? "restart" : "start", "outpost.service"]);
    await printFingerprint(host, installedConfig(configPath, host.hostname));
  }
  return EXIT.OK;
}

/** How long install waits for a started agent to have made its key (it does so before connecting). */
const KEY_WAIT_MS = 30_000;

/**
 * The device key's fingerprint, once the service has started and made it: what an operator pins for this
 * device (docs/security.md). The agent makes the key itself, at its first start; install never does (an image
 * built with --root would give every device the same key). The `device` line gives the id and the public key
 * itself, for scripts/deploy.sh to pin over the ssh session it already trusts.
 */
async function printFingerprint(host: Host, config: { stateDir: string; device: string }): Promise<void> {
  const uid = serviceUid();
  const deadline = Date.now() + KEY_WAIT_MS;
  for (;;) {
    let key: { publicKey: string; fingerprint: string } | undefined;
    let problem: string | undefined;
    try {
      key = deviceKey(config.stateDir, uid);
    } catch (err) {
      problem = errorMessage(err);
    }
    if (key) {
      host.stdout.write(`key       ${key.fingerprint}  (the device's own key: operators pin this fingerprint)\n`);
      host.stdout.write(`device    ${config.device} ${key.publicKey}\n`);
      return;
    }
    if (Date.now() >= deadline) {
      host.stdout.write(`note      no device key yet${problem ? ` (${problem})` : ""}: see journalctl -u outpost\n`);
      return;
    }
    await sleep(200);
  }
}

/** The state directory and device id the installed config names (the layout's and the hostname when unreadable). */
function installedConfig(configPath: string, hostname: string): { stateDir: string; device: string } {
  try {
    const { config } = loadAgentConfig({ path: configPath, required: false, env: {}, hostname });
    return { stateDir: config.state.dir, device: config.device.id };
  } catch {
    return { stateDir: LAYOUT.state, device: hostname };
  }
}

/** What uninstall stops and disables; the update's units go with the service. */
const UNITS = ["outpost.service", "outpost-update.path", "outpost-rollback.path"];

/** Files the agent reads at start, which under --root live in the tree, not on this machine. */
const FILE_KEYS = new Set(["mqtt.passwordFile", "mqtt.ca", "mqtt.cert", "mqtt.key"]);

/**
 * What is wrong with the config to be installed, as the agent will read it (no environment: the unit sets
 * none). Under --root a missing password, CA or key file is the tree's business, not a problem here.
 */
function configProblems(path: string, hostname: string, system: boolean): ConfigProblem[] {
  try {
    loadAgentConfig({ path, required: true, env: {}, hostname });
    return [];
  } catch (err) {
    if (!isOutpostError(err, "CONFIG_INVALID")) throw err;
    const problems = err.details as ConfigProblem[];
    return system ? problems : problems.filter((p) => !FILE_KEYS.has(p.path));
  }
}

/**
 * The files a config names that the service user must read. Read as plain YAML, not validated: under --root
 * they exist in the tree, not on this machine, and an invalid config is the agent's to report (exit 78).
 */
function namedFiles(path: string): string[] {
  try {
    const mqtt = (parse(readFileSync(path, "utf8")) as { mqtt?: Record<string, unknown> } | null)?.mqtt ?? {};
    return [mqtt.passwordFile, mqtt.ca, mqtt.cert, mqtt.key].filter((p): p is string => typeof p === "string");
  } catch {
    return [];
  }
}
