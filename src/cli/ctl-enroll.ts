// `ctl enroll` and `ctl revoke`: each device gets broker credentials of its own, and the broker's ACL confines
// it to its own topics (docs/broker.md). The files are mosquitto 2.0's, for the shipped configuration
// (scripts/mosquitto/outpost.conf): devices.passwd, devices.acl, operators.passwd, operators.acl.
import { execFileSync } from "node:child_process";
import { pbkdf2Sync, randomBytes } from "node:crypto";
import {
  chmodSync,
  chownSync,
  closeSync,
  mkdirSync,
  openSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { stringify } from "yaml";
import { z } from "zod";
import { errorMessage } from "../core/errors.ts";
import { fsyncPath, writeFileAtomically } from "../core/files.ts";
import { DEVICE_ID, GROUP_NAME } from "../core/patterns.ts";
import { nodeId } from "../homeassistant/discovery.ts";
import { BROKER_FLAGS, brokerOptions, ctlSettings, readBoundedText } from "./ctl-settings.ts";
import { knownDevices } from "./ctl-trust.ts";
import { EXIT, type Host, UsageError } from "./host.ts";
import { brokerId } from "./known-devices.ts";

/** What enrolment knows: the broker directory's own record, from which the ACLs are written whole. */
/** A topic prefix an ACL line can hold: levels of their own, no wildcard, no `$`, no empty level. */
const TOPIC_PREFIX = /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/;
const name = z.string().regex(DEVICE_ID);
const registrySchema = z.strictObject({
  prefix: z.string().regex(TOPIC_PREFIX),
  homeassistant: z.string().regex(TOPIC_PREFIX),
  devices: z.record(name, z.strictObject({ groups: z.array(z.string().regex(GROUP_NAME)), enrolled: z.string() })),
  operators: z.record(name, z.strictObject({ enrolled: z.string() })),
  /** Read-only logins (Home Assistant, dashboards): on the devices' listener, whose client ids are usernames. */
  readers: z.record(name, z.strictObject({ enrolled: z.string() })).default({}),
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
  // What the agent publishes (mqtt/topics.ts), each by name: not its own command topics or update chunks,
  // which it reads (a retained message there would outlive a revoke or a re-install).
  const writes = ["status", "telemetry", "telemetry/full", "state", "update", "update/get", "diag"];
  const lines = [
    "# Written by outpost ctl enroll / revoke from outpost-enrolled.json: change devices with those.",
    ...writes.map((t) => `pattern write ${p}/%u/${t}`),
    ...["events/#", "alarms/#", "results/#", "cmd/+/reply", "reply/#"].map((t) => `pattern write ${p}/%u/${t}`),
    `pattern read ${p}/%u/cmd/+`,
    `pattern read ${p}/%u/update/data`,
    // The every-device group (mqtt/topics.ts EVERY_DEVICE): presence where retained messages do not reach
    // wildcards; it takes `ping` and `describe` only.
    `pattern read ${p}/_group/_all/cmd/+`,
    `pattern write ${r.homeassistant}/+/outpost_%u/#`,
  ];
  for (const [id, d] of Object.entries(r.devices).sort(([a], [b]) => a.localeCompare(b))) {
    lines.push("", `user ${id}`);
    for (const g of d.groups) lines.push(`topic read ${p}/_group/${g}/cmd/+`);
    if (id.includes(".")) lines.push(`topic write ${r.homeassistant}/+/${nodeId(id)}/#`);
  }
  for (const id of Object.keys(r.readers).sort()) {
    lines.push("", `user ${id}`, `topic read ${p}/#`, `topic read ${r.homeassistant}/#`);
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
  reader: { type: "boolean" },
  "broker-group": { type: "string" },
  "device-url": { type: "string" },
  "ha-prefix": { type: "string" },
} as const;

type Role = "device" | "operator" | "reader";
/** Which files a role's logins live in: readers log in on the devices' listener (client id = username). */
const FILES: Record<Role, "devices" | "operators"> = { device: "devices", operator: "operators", reader: "devices" };
const ROLES: Record<Role, "devices" | "operators" | "readers"> = {
  device: "devices",
  operator: "operators",
  reader: "readers",
};

/** What one run of enroll or revoke works on, under the broker directory's lock. */
function open(host: Host, args: string[], what: string) {
  const { values, positionals } = parseArgs({ args, options: FLAGS, allowPositionals: true });
  if (positionals.length === 0)
    throw new UsageError(`ctl ${what}: expected DEVICE... (or --operator / --reader NAME...)`);
  if (values.operator && values.reader) throw new UsageError(`ctl ${what}: --operator or --reader, not both`);
  const dir = values["broker-dir"];
  if (dir === undefined) throw new UsageError(`ctl ${what}: --broker-dir DIR (where the broker's files are) is needed`);
  const ha = values["ha-prefix"];
  if (ha !== undefined && !TOPIC_PREFIX.test(ha)) throw new UsageError(`--ha-prefix ${ha}: not a topic prefix`);
  const settings = ctlSettings(host, values);
  const o = brokerOptions(settings);
  if (!TOPIC_PREFIX.test(o.prefix)) throw new UsageError(`--prefix ${o.prefix}: not a topic prefix an ACL can hold`);
  const role: Role = values.operator ? "operator" : values.reader ? "reader" : "device";
  return { values, ids: positionals, dir, settings, o, role, gid: brokerGid(host, values["broker-group"]) };
}

/**
 * `ctl enroll DEVICE... --broker-dir DIR [--group G]... [--out DIR] [--device-url URL]`: per device a random
 * password, its line in DIR/devices.passwd, its groups in DIR/devices.acl, and in OUT/<id>/ the password file
 * and the config snippet the device needs. `--operator NAME...`: operators' logins (operators.passwd,
 * operators.acl); `--reader NAME...`: read-only logins (Home Assistant, dashboards) on the devices' listener.
 * Enrolling again makes a new password and keeps the groups unless --group names them.
 */
export function enrollCommand(host: Host, args: string[]): number {
  const { values, ids, dir, o, role, gid } = open(host, args, "enroll");
  const groups = values.group;
  for (const g of groups ?? []) if (!GROUP_NAME.test(g)) throw new UsageError(`--group ${g}: not a group name`);
  for (const id of ids) {
    // A username is a topic level in the ACL (%u) and a client id: only what maps one-to-one.
    if (!DEVICE_ID.test(id)) {
      throw new UsageError(`${id}: expected 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit`);
    }
  }
  const out = values.out ?? "enroll";
  return withLock(dir, () => {
    const registry = readRegistry(dir, o.prefix, values["ha-prefix"]);
    for (const id of ids) {
      for (const other of (["devices", "operators", "readers"] as const).filter((k) => k !== ROLES[role])) {
        if (Object.hasOwn(registry[other], id)) throw new UsageError(`${id} is already enrolled in ${other}`);
      }
    }
    const passwd = readPasswd(join(dir, `${FILES[role]}.passwd`));
    const now = new Date().toISOString();
    for (const id of ids) {
      const password = randomBytes(32).toString("base64url");
      passwd.set(id, mosquittoPasswordLine(id, password));
      const at = join(out, id);
      mkdirSync(at, { recursive: true, mode: 0o700 });
      writeFileAtomically(join(at, "mqtt-password"), `${password}\n`, 0o600);
      if (role === "device") {
        const kept = registry.devices[id]?.groups ?? [];
        registry.devices[id] = { groups: groups ?? kept, enrolled: now };
        const url = values["device-url"] ?? deviceUrl(o.url);
        const snippet = deviceSnippet(id, groups ?? kept, url, registry.prefix);
        writeFileAtomically(join(at, "config.yaml"), snippet, 0o600);
      } else {
        registry[ROLES[role]][id] = { enrolled: now };
        const ctl = { username: id, passwordFile: "mqtt-password", prefix: registry.prefix };
        writeFileAtomically(join(at, "ctl.yaml"), stringify(ctl), 0o600);
      }
      host.stdout.write(`enrolled ${id}: ${at}/\n`);
    }
    saveBrokerFiles(dir, registry, FILES[role], passwd, gid);
    host.stdout.write(
      `${dir}: ${FILES[role]}.passwd and ${FILES[role]}.acl written: reload the broker (kill -HUP mosquitto); a login enrolled again has a new password, and the broker disconnects it until it has the new one\n`,
    );
    if (role === "device") {
      host.stdout.write(
        "on each device: install -o root -g outpost -m 0640 mqtt-password /etc/outpost/mqtt-password, and merge config.yaml\n",
      );
    }
    return EXIT.OK;
  });
}

/** `ctl revoke DEVICE... --broker-dir DIR`: the device's login, its ACL block and its pin are removed. */
export function revokeCommand(host: Host, args: string[]): number {
  const { ids, dir, settings, o, role, gid, values } = open(host, args, "revoke");
  return withLock(dir, () => {
    const registry = readRegistry(dir, o.prefix, values["ha-prefix"]);
    const passwd = readPasswd(join(dir, `${FILES[role]}.passwd`));
    const pins = knownDevices(settings);
    let missing = 0;
    for (const id of ids) {
      const known = Object.hasOwn(registry[ROLES[role]], id);
      delete registry[ROLES[role]][id];
      const had = passwd.delete(id);
      const unpinned = role === "device" ? pins.forget(brokerId(o.url), o.prefix, id) : 0;
      if (!known && !had) missing += 1;
      host.stdout.write(`${known || had ? "revoked" : "not enrolled:"} ${id}${unpinned > 0 ? " (pin removed)" : ""}\n`);
    }
    saveBrokerFiles(dir, registry, FILES[role], passwd, gid);
    if (role === "device") pins.save();
    host.stdout.write(`${dir}: reload the broker (kill -HUP mosquitto): it then disconnects a revoked login\n`);
    return missing > 0 ? EXIT.FAILURE : EXIT.OK;
  });
}

/**
 * One enroll or revoke at a time in a broker directory: each reads the record and the password file, changes
 * them and writes them back, and two at once would lose one's change.
 */
function withLock<T>(dir: string, run: () => T): T {
  mkdirSync(dir, { recursive: true });
  const lock = join(dir, ".outpost-enroll.lock");
  let fd: number;
  try {
    fd = openSync(lock, "wx", 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    throw new UsageError(`${lock}: another ctl enroll or revoke is running (if none is, remove the file)`);
  }
  try {
    return run();
  } finally {
    closeSync(fd);
    rmSync(lock, { force: true });
  }
}

/**
 * The broker's group (`--broker-group`, default `mosquitto`), which must read the files after the broker drops
 * root: an unreadable password file stops every login at the next reload, and an unreadable ACL file is
 * dropped at a reload (mosquitto 2.0.11 then runs the listener with no ACL at all).
 */
function brokerGid(host: Host, group: string | undefined): number | undefined {
  try {
    const line = execFileSync("getent", ["group", group ?? "mosquitto"], { encoding: "utf8" });
    const gid = Number(line.split(":")[2]);
    return Number.isInteger(gid) ? gid : undefined;
  } catch {
    if (group !== undefined) throw new UsageError(`--broker-group ${group}: no such group`);
    host.stderr.write("outpost: no group mosquitto here: the password files are made readable by all (0644)\n");
    return undefined;
  }
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
  if (text === undefined) {
    return { prefix, homeassistant: haPrefix ?? "homeassistant", devices: {}, operators: {}, readers: {} };
  }
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
 * writes the files from again. The broker reads the files as its own group after dropping root (brokerGid):
 * a file that was there keeps its owner and group (an administrator's chgrp survives), a new one gets the
 * broker's group; the password file is 0640 (0644 without that group: the hashes are of 32 random bytes), the
 * ACL 0644 (it holds no secret, and must never be unreadable).
 */
function saveBrokerFiles(
  dir: string,
  r: Registry,
  kind: "devices" | "operators",
  passwd: Map<string, string>,
  gid: number | undefined,
): void {
  writeFileAtomically(join(dir, REGISTRY), `${JSON.stringify(r, null, 2)}\n`, 0o600);
  const lines = [...passwd.values()].join("\n");
  writeBrokerFile(
    join(dir, `${kind}.passwd`),
    lines === "" ? "" : `${lines}\n`,
    gid === undefined ? 0o644 : 0o640,
    gid,
  );
  writeBrokerFile(join(dir, `${kind}.acl`), kind === "devices" ? devicesAcl(r) : operatorsAcl(r), 0o644, gid);
}

function writeBrokerFile(path: string, text: string, mode: number, gid: number | undefined): void {
  let owner: { uid: number; gid: number } | undefined;
  try {
    const st = statSync(path);
    owner = { uid: st.uid, gid: st.gid };
  } catch {
    // A new file.
  }
  const tmp = `${path}.tmp`;
  rmSync(tmp, { force: true });
  writeFileSync(tmp, text, { mode, flag: "wx" });
  const group = owner?.gid ?? gid;
  if (group !== undefined) {
    try {
      chownSync(tmp, owner?.uid ?? -1, group);
    } catch {
      // Not root, and not of that group: the mode below still lets the broker read the ACL.
    }
  }
  chmodSync(tmp, mode);
  fsyncPath(tmp);
  renameSync(tmp, path);
  fsyncPath(dirname(path));
}
