// `ctl enroll` and `ctl revoke`: each device gets broker credentials of its own, and the broker's ACL confines
// it to its own topics (docs/broker.md). The files are mosquitto 2.0's, for the shipped configuration
// (scripts/mosquitto/outpost.conf): devices.passwd, devices.acl, operators.passwd, operators.acl.
import { pbkdf2Sync, randomBytes } from "node:crypto";
import { chmodSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { stringify } from "yaml";
import { z } from "zod";
import { errorMessage } from "../core/errors.ts";
import { writeFileAtomically } from "../core/files.ts";
import { DEVICE_ID, GROUP_NAME } from "../core/patterns.ts";
import { nodeId } from "../homeassistant/discovery.ts";
import { BROKER_FLAGS, brokerOptions, ctlSettings, readBoundedText } from "./ctl-settings.ts";
import { knownDevices } from "./ctl-trust.ts";
import { EXIT, type Host, UsageError } from "./host.ts";
import { brokerId } from "./known-devices.ts";

/** What enrolment knows: the broker directory's own record, from which the ACLs are written whole. */
const registrySchema = z.strictObject({
  prefix: z.string().min(1),
  homeassistant: z.string().min(1),
  devices: z.record(z.string(), z.strictObject({ groups: z.array(z.string()), enrolled: z.string() })),
  operators: z.record(z.string(), z.strictObject({ enrolled: z.string() })),
});
type Registry = z.infer<typeof registrySchema>;

const REGISTRY = "outpost-enrolled.json";
/** mosquitto_passwd's own default: the passwords are 32 random bytes, so more rounds would add nothing. */
const PBKDF2_ROUNDS = 101;

/**
 * A password file line in mosquitto 2.0's format: `name:$7$<rounds>$<salt>$<hash>`, PBKDF2-HMAC-SHA512 with a
 * 12-byte salt and a 64-byte hash, each in standard base64 (what mosquitto_passwd writes).
 */
export function mosquittoPasswordLine(name: string, password: string, salt = randomBytes(12)): string {
  const hash = pbkdf2Sync(password, salt, PBKDF2_ROUNDS, 64, "sha512");
  return `${name}:$7$${PBKDF2_ROUNDS}$${salt.toString("base64")}$${hash.toString("base64")}`;
}

/**
 * The devices' ACL. `pattern` lines apply to every user of the devices' listener, with `%u` the username,
 * which the broker checked (never `%c`: the client chooses its id). A device writes only under `P/<id>/` and
 * its Home Assistant node, and reads its own commands and update chunks; its groups' commands are granted to it
 * by name. A device id with a dot gets its Home Assistant node (which maps the dot) by name too.
 */
export function devicesAcl(r: Registry): string {
  const p = r.prefix;
  const lines = [
    "# Written by outpost ctl enroll / revoke from outpost-enrolled.json: change devices with those.",
    `pattern write ${p}/%u/#`,
    `pattern read ${p}/%u/cmd/+`,
    `pattern read ${p}/%u/update/data`,
    `pattern write ${r.homeassistant}/+/outpost_%u/#`,
  ];
  for (const [id, d] of Object.entries(r.devices).sort(([a], [b]) => a.localeCompare(b))) {
    lines.push("", `user ${id}`);
    for (const g of d.groups) lines.push(`topic read ${p}/_group/${g}/cmd/+`);
    if (id.includes(".")) lines.push(`topic write ${r.homeassistant}/+/${nodeId(id)}/#`);
  }
  return `${lines.join("\n")}\n`;
}

/** The operators' ACL: read the fleet and Home Assistant's configs; write commands and update chunks only. */
export function operatorsAcl(r: Registry): string {
  const p = r.prefix;
  const lines = ["# Written by outpost ctl enroll --operator from outpost-enrolled.json."];
  for (const name of Object.keys(r.operators).sort()) {
    lines.push(
      "",
      `user ${name}`,
      `topic read ${p}/#`,
      `topic read ${r.homeassistant}/#`,
      `topic write ${p}/+/cmd/+`,
      `topic write ${p}/_group/+/cmd/+`,
      `topic write ${p}/+/update/data`,
    );
  }
  return `${lines.join("\n")}\n`;
}

const FLAGS = {
  ...BROKER_FLAGS,
  "broker-dir": { type: "string" },
  out: { type: "string" },
  group: { type: "string", multiple: true },
  operator: { type: "boolean" },
  "device-url": { type: "string" },
  "ha-prefix": { type: "string" },
} as const;

/**
 * `ctl enroll DEVICE... --broker-dir DIR [--group G]... [--out DIR] [--device-url URL]`: per device a random
 * password, its line in DIR/devices.passwd, its groups in DIR/devices.acl, and in OUT/<id>/ the password file
 * and the config snippet the device needs. `--operator NAME...`: the same for operators' logins.
 */
export function enrollCommand(host: Host, args: string[]): number {
  const { values, positionals } = parseArgs({ args, options: FLAGS, allowPositionals: true });
  if (positionals.length === 0) throw new UsageError("ctl enroll: expected DEVICE... (or --operator NAME...)");
  const dir = values["broker-dir"];
  if (dir === undefined) throw new UsageError("ctl enroll: --broker-dir DIR (where the broker's files are) is needed");
  const settings = ctlSettings(host, values);
  const o = brokerOptions(settings);
  const registry = readRegistry(dir, o.prefix, values["ha-prefix"]);
  const groups = values.group ?? [];
  for (const g of groups) if (!GROUP_NAME.test(g)) throw new UsageError(`--group ${g}: not a group name`);
  const out = values.out ?? "enroll";
  const now = new Date().toISOString();
  const kind = values.operator ? "operators" : "devices";
  const other = values.operator ? registry.devices : registry.operators;
  for (const id of positionals) {
    // A username is a topic level in the ACL (%u) and a client id: only what maps one-to-one.
    if (!DEVICE_ID.test(id)) {
      throw new UsageError(`${id}: expected 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit`);
    }
    if (Object.hasOwn(other, id)) {
      throw new UsageError(`${id} is already enrolled as ${values.operator ? "a device" : "an operator"}`);
    }
  }
  const passwd = readPasswd(join(dir, `${kind}.passwd`));
  for (const id of positionals) {
    const password = randomBytes(32).toString("base64url");
    passwd.set(id, mosquittoPasswordLine(id, password));
    const at = join(out, id);
    mkdirSync(at, { recursive: true, mode: 0o700 });
    writeFileAtomically(join(at, "mqtt-password"), `${password}\n`, 0o600);
    if (values.operator) {
      registry.operators[id] = { enrolled: now };
      writeFileAtomically(
        join(at, "ctl.yaml"),
        stringify({ username: id, passwordFile: "mqtt-password", prefix: registry.prefix }),
        0o600,
      );
    } else {
      registry.devices[id] = { groups, enrolled: now };
      const url = values["device-url"] ?? deviceUrl(o.url);
      writeFileAtomically(join(at, "config.yaml"), deviceSnippet(id, groups, url, registry.prefix), 0o600);
    }
    host.stdout.write(
      `enrolled ${id}: ${join(at, "mqtt-password")}${values.operator ? "" : `, ${join(at, "config.yaml")}`}\n`,
    );
  }
  saveBrokerFiles(dir, registry, kind, passwd);
  host.stdout.write(`${dir}: ${kind}.passwd and ${kind}.acl written: reload the broker (kill -HUP mosquitto)\n`);
  if (!values.operator) {
    host.stdout.write(
      "on each device: install -o root -g outpost -m 0640 mqtt-password /etc/outpost/mqtt-password, and merge config.yaml\n",
    );
  }
  return EXIT.OK;
}

/** `ctl revoke DEVICE... --broker-dir DIR`: the device's login, its ACL block and its pin are removed. */
export function revokeCommand(host: Host, args: string[]): number {
  const { values, positionals } = parseArgs({ args, options: FLAGS, allowPositionals: true });
  if (positionals.length === 0) throw new UsageError("ctl revoke: expected DEVICE...");
  const dir = values["broker-dir"];
  if (dir === undefined) throw new UsageError("ctl revoke: --broker-dir DIR (where the broker's files are) is needed");
  const settings = ctlSettings(host, values);
  const o = brokerOptions(settings);
  const registry = readRegistry(dir, o.prefix, values["ha-prefix"]);
  const kind = values.operator ? "operators" : "devices";
  const passwd = readPasswd(join(dir, `${kind}.passwd`));
  const pins = knownDevices(settings);
  let missing = 0;
  for (const id of positionals) {
    const known = values.operator ? Object.hasOwn(registry.operators, id) : Object.hasOwn(registry.devices, id);
    if (values.operator) delete registry.operators[id];
    else delete registry.devices[id];
    const had = passwd.delete(id);
    const unpinned = values.operator ? 0 : pins.forget(brokerId(o.url), o.prefix, id);
    if (!known && !had) missing += 1;
    host.stdout.write(`${known || had ? "revoked" : "not enrolled:"} ${id}${unpinned > 0 ? " (pin removed)" : ""}\n`);
  }
  saveBrokerFiles(dir, registry, kind, passwd);
  if (!values.operator) pins.save();
  host.stdout.write(
    `${dir}: reload the broker (kill -HUP mosquitto), and restart it to end a revoked client's open connection\n`,
  );
  return missing > 0 ? EXIT.FAILURE : EXIT.OK;
}

/** ctl's own broker URL with the devices' listener: mqtts and port 8883 (docs/broker.md). */
function deviceUrl(url: string): string {
  try {
    return `mqtts://${new URL(url).hostname}:8883`;
  } catch {
    return "mqtts://broker:8883";
  }
}

function deviceSnippet(id: string, groups: string[], url: string, prefix: string): string {
  const config = {
    device: { id, ...(groups.length > 0 ? { groups } : {}) },
    mqtt: {
      url,
      topicPrefix: prefix,
      username: id,
      // Root's file, readable by the service's group: never in the state directory, which the agent can write.
      passwordFile: "/etc/outpost/mqtt-password",
    },
  };
  return `# outpost ctl enroll ${id}: merge into /etc/outpost/config.yaml\n${stringify(config)}`;
}

function readRegistry(dir: string, prefix: string, haPrefix: string | undefined): Registry {
  const path = join(dir, REGISTRY);
  const text = readBoundedText(path, 16 * 1024 * 1024, false, "an enrolment record");
  if (text === undefined) return { prefix, homeassistant: haPrefix ?? "homeassistant", devices: {}, operators: {} };
  let parsed: ReturnType<typeof registrySchema.safeParse>;
  try {
    parsed = registrySchema.safeParse(JSON.parse(text));
  } catch (err) {
    throw new UsageError(`${path}: ${errorMessage(err)}`);
  }
  if (!parsed.success) throw new UsageError(`${path}: not an enrolment record: ${parsed.error.issues[0]?.message}`);
  if (parsed.data.prefix !== prefix) {
    throw new UsageError(`${path} is for the prefix ${parsed.data.prefix}, not ${prefix} (--prefix)`);
  }
  return haPrefix === undefined ? parsed.data : { ...parsed.data, homeassistant: haPrefix };
}

/** The password file's lines by name, in order; lines that are not `name:hash` are dropped. */
function readPasswd(path: string): Map<string, string> {
  const text = readBoundedText(path, 16 * 1024 * 1024, false, "a password file") ?? "";
  const lines = new Map<string, string>();
  for (const line of text.split("\n")) {
    const at = line.indexOf(":");
    if (at > 0) lines.set(line.slice(0, at), line);
  }
  return lines;
}

/**
 * The record first, then the files made from it, each atomically: a crash leaves a record the next run
 * writes the files from again. The password files are mosquitto's to read: 0640, for a broker that reads them
 * as its own group after dropping root (docs/broker.md).
 */
function saveBrokerFiles(dir: string, r: Registry, kind: "devices" | "operators", passwd: Map<string, string>): void {
  mkdirSync(dir, { recursive: true });
  writeFileAtomically(join(dir, REGISTRY), `${JSON.stringify(r, null, 2)}\n`, 0o600);
  writeFileAtomically(join(dir, `${kind}.passwd`), `${[...passwd.values()].join("\n")}\n`, 0o640);
  writeFileAtomically(join(dir, `${kind}.acl`), kind === "devices" ? devicesAcl(r) : operatorsAcl(r), 0o644);
  chmodSync(join(dir, `${kind}.passwd`), 0o640);
}
