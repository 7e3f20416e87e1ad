// Where `outpost ctl` takes its settings from: its flags, then the environment, then `~/.outpost/ctl.yaml`, then
// the defaults. An operator sets the broker and the key once, in the file, instead of in every shell.
import { closeSync, constants, fstatSync, openSync, readFileSync, readSync } from "node:fs";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { parse } from "yaml";
import { z } from "zod";
import { parsePrivateKey } from "../commands/keys.ts";
import { parseDuration } from "../config/duration.ts";
import { errorMessage } from "../core/errors.ts";
import { BROKER_URL, redactUrl } from "../core/patterns.ts";
import { readPasswordFile } from "../mqtt/options.ts";
import type { BrokerOptions, CommandForm } from "./ctl-client.ts";
import type { Host } from "./host.ts";
import { UsageError } from "./host.ts";

/** Each setting: its flag, its variable, its key in the file, whether it names a file, and its default. */
const SETTINGS = {
  broker: { flag: "broker", env: "OUTPOST_CTL_BROKER", file: "broker", path: false, fallback: "mqtt://127.0.0.1:1883" },
  username: { flag: "username", env: "OUTPOST_CTL_USERNAME", file: "username", path: false },
  password: { flag: undefined, env: "OUTPOST_CTL_PASSWORD", file: undefined, path: false },
  passwordFile: { flag: "password-file", env: undefined, file: "passwordFile", path: true },
  ca: { flag: "ca", env: undefined, file: "ca", path: true },
  cert: { flag: "cert", env: undefined, file: "cert", path: true },
  tlsKey: { flag: "tls-key", env: undefined, file: "tlsKey", path: true },
  prefix: { flag: "prefix", env: "OUTPOST_CTL_PREFIX", file: "prefix", path: false, fallback: "outpost/v1" },
  protocol: { flag: "protocol", env: "OUTPOST_CTL_PROTOCOL", file: "protocol", path: false, fallback: "auto" },
  key: { flag: "key", env: "OUTPOST_CTL_KEY", file: "key", path: true },
  knownDevices: { flag: "known-devices", env: "OUTPOST_CTL_KNOWN_DEVICES", file: "knownDevices", path: true },
  rollouts: { flag: "rollouts", env: "OUTPOST_CTL_ROLLOUTS", file: "rollouts", path: true },
  commandForm: {
    flag: "command-form",
    env: "OUTPOST_CTL_COMMAND_FORM",
    file: "commandForm",
    path: false,
    fallback: "auto",
  },
} as const satisfies Record<
  string,
  { flag: string | undefined; env: string | undefined; file: string | undefined; path: boolean; fallback?: string }
>;

export type CtlSettingName = keyof typeof SETTINGS;

/** The file's keys: the settings that have one (the password itself only from a file or the environment). */
const fileSchema = z.strictObject({
  // One broker, or the nodes of a cluster to try in turn: a list, or URLs separated by commas.
  broker: z
    .union([z.string(), z.array(z.string()).min(1)])
    .transform((b) => (Array.isArray(b) ? b.join(",") : b))
    .refine((b) => brokerUrls(b).every((u) => BROKER_URL.test(u)), "expected mqtt:// or mqtts:// URLs")
    .optional(),
  username: z.string().min(1).optional(),
  passwordFile: z.string().min(1).optional(),
  ca: z.string().min(1).optional(),
  cert: z.string().min(1).optional(),
  tlsKey: z.string().min(1).optional(),
  prefix: z.string().min(1).optional(),
  protocol: z.union([z.literal("auto"), z.literal(4), z.literal(5), z.literal("4"), z.literal("5")]).optional(),
  key: z.string().min(1).optional(),
  knownDevices: z.string().min(1).optional(),
  rollouts: z.string().min(1).optional(),
  commandForm: z.enum(["auto", "dotted", "flat"]).optional(),
});

/** `--broker a,b`: the first, then the others in turn when it cannot be reached. */
function brokerUrls(text: string): string[] {
  return text.split(",").map((u) => u.trim());
}

/** The largest ctl.yaml read: a few lines; a cap keeps a wrong path (a device node, a huge file) harmless. */
const MAX_FILE = 64 * 1024;

export interface CtlSetting {
  value: string | undefined;
  /** `--broker`, `OUTPOST_CTL_BROKER`, `in ~/.outpost/ctl.yaml`, or `default`. */
  origin: string;
}

export type CtlSettings = Record<CtlSettingName, CtlSetting> & { file: string | undefined };

/** The file `ctl` reads: OUTPOST_CTL_CONFIG, else ~/.outpost/ctl.yaml (none without a home directory). */
export function ctlConfigPath(env: Host["env"]): string | undefined {
  // An empty OUTPOST_CTL_CONFIG is an unset one: the default file, which may be absent.
  if (env.OUTPOST_CTL_CONFIG) return env.OUTPOST_CTL_CONFIG;
  return env.HOME ? join(env.HOME, ".outpost", "ctl.yaml") : undefined;
}

/** Every setting with where it came from. `flags`: the parsed command line (string flags only are read). */
export function ctlSettings(host: Host, flags: Readonly<Record<string, unknown>>): CtlSettings {
  const path = ctlConfigPath(host.env);
  const fromFile = path === undefined ? {} : readCtlFile(path, Boolean(host.env.OUTPOST_CTL_CONFIG));
  const out = { file: path } as CtlSettings;
  for (const [name, s] of Object.entries(SETTINGS) as [CtlSettingName, (typeof SETTINGS)[CtlSettingName]][]) {
    const flag = s.flag === undefined ? undefined : flags[s.flag];
    const env = s.env === undefined ? undefined : host.env[s.env];
    const file = s.file === undefined ? undefined : fromFile[s.file as keyof typeof fromFile];
    if (typeof flag === "string") out[name] = { value: flag, origin: `--${s.flag}` };
    else if (env !== undefined && env !== "") out[name] = { value: env, origin: s.env ?? "" };
    else if (file !== undefined && path !== undefined) {
      // A file named in ctl.yaml is relative to ctl.yaml's directory, and ~ is the home directory.
      const text = String(file);
      const value = s.path ? inHome(text, host.env.HOME, dirname(path)) : text;
      out[name] = { value, origin: `in ${path}` };
    } else out[name] = { value: "fallback" in s ? s.fallback : undefined, origin: "default" };
  }
  // The pins' file defaults to one beside ctl.yaml's default place (none without a home directory).
  if (out.knownDevices.value === undefined && host.env.HOME) {
    out.knownDevices = { value: join(host.env.HOME, ".outpost", "known_devices"), origin: "default" };
  }
  // Rollouts' journal likewise (rollout-journal.ts).
  if (out.rollouts.value === undefined && host.env.HOME) {
    out.rollouts = { value: join(host.env.HOME, ".outpost", "rollouts.db"), origin: "default" };
  }
  // The password and a password file are one setting in two forms: the higher source wins, the other is unused.
  const rank = (origin: string) => (origin.startsWith("--") ? 0 : origin.startsWith("in ") ? 2 : 1);
  if (out.password.value !== undefined && out.passwordFile.value !== undefined) {
    const fileWins = rank(out.passwordFile.origin) < rank(out.password.origin);
    const [kept, dropped] = fileWins
      ? (["passwordFile", "password"] as const)
      : (["password", "passwordFile"] as const);
    out[dropped] = { value: undefined, origin: `${out[dropped].origin}, unused: ${out[kept].origin} wins` };
  }
  return out;
}

function inHome(text: string, home: string | undefined, base: string): string {
  if (home && (text === "~" || text.startsWith("~/"))) return join(home, text.slice(1));
  return isAbsolute(text) ? text : resolve(base, text);
}

/**
 * A small text file of the operator's, or undefined when it is absent and not `required`. Opened without
 * blocking and checked before reading: a FIFO or a device named by mistake is refused, and no more than `cap`
 * bytes are ever read.
 */
export function readBoundedText(path: string, cap: number, required: boolean, what: string): string | undefined {
  let fd: number | undefined;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw new UsageError(`${path}: not a regular file`);
    // Sized by the file, read to its end: a file that grows meanwhile is still cut at the cap.
    const buf = Buffer.alloc(Math.min(stat.size, cap) + 1);
    let n = 0;
    for (let got = -1; got !== 0 && n < buf.length; n += got) got = readSync(fd, buf, n, buf.length - n, n);
    if (n > cap || stat.size > cap)
      throw new UsageError(`${path}: larger than ${cap / 1024} KiB, too large for ${what}`);
    return buf.subarray(0, n).toString("utf8");
  } catch (err) {
    if (err instanceof UsageError) throw err;
    if ((err as NodeJS.ErrnoException).code === "ENOENT" && !required) return undefined;
    throw new UsageError(`${path}: ${errorMessage(err)}`);
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

function readCtlFile(path: string, required: boolean): z.output<typeof fileSchema> {
  const text = readBoundedText(path, MAX_FILE, required, "a file of a few settings");
  if (text === undefined) return {};
  let raw: unknown;
  try {
    raw = parse(text) ?? {};
  } catch (err) {
    throw new UsageError(`${path}: not valid YAML: ${errorMessage(err).split("\n")[0]}`);
  }
  const parsed = fileSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const key = issue?.path.join(".") || "(file)";
    const known = Object.keys(fileSchema.shape).join(", ");
    const what =
      issue?.code === "unrecognized_keys"
        ? `unknown key ${issue.keys.join(", ")} (known: ${known})`
        : `${key}: ${issue?.message ?? "invalid"}`;
    throw new UsageError(`${path}: ${what}`);
  }
  return parsed.data;
}

/** `ctl config`: each setting, its value (never a password) and where it comes from. */
export function printCtlSettings(host: Host, settings: CtlSettings): void {
  host.stdout.write(`# ctl settings: flags, then the environment, then ${settings.file ?? "(no home directory)"}\n`);
  for (const name of Object.keys(SETTINGS) as CtlSettingName[]) {
    const s = settings[name];
    const shown =
      s.value === undefined
        ? "-"
        : name === "password"
          ? "<redacted>"
          : name === "broker"
            ? redactUrl(s.value)
            : s.value;
    host.stdout.write(`${name.padEnd(13)} ${shown}  # ${s.origin}\n`);
  }
}

/** The flags every ctl subcommand takes for the broker and its output. */
export const BROKER_FLAGS = {
  broker: { type: "string" },
  username: { type: "string" },
  "password-file": { type: "string" },
  ca: { type: "string" },
  cert: { type: "string" },
  "tls-key": { type: "string" },
  prefix: { type: "string" },
  protocol: { type: "string" },
  "command-form": { type: "string" },
  "known-devices": { type: "string" },
  json: { type: "boolean" },
} as const;

/** Where the broker is and who ctl is, from ctl's settings (flags, environment, ~/.outpost/ctl.yaml, defaults). */
export function brokerOptions(
  s: CtlSettings,
): BrokerOptions & { prefix: string; origin: string; commandForm: CommandForm } {
  const [url = "", ...failover] = brokerUrls(s.broker.value ?? "");
  for (const u of [url, ...failover]) {
    if (!BROKER_URL.test(u))
      throw new UsageError(`--broker must be an mqtt:// or mqtts:// URL, not ${u} (${s.broker.origin})`);
  }
  const commandForm = s.commandForm.value ?? "auto";
  if (commandForm !== "auto" && commandForm !== "dotted" && commandForm !== "flat")
    throw new UsageError(`--command-form must be auto, dotted or flat, not ${commandForm} (${s.commandForm.origin})`);
  const protocol = s.protocol.value ?? "auto";
  if (protocol !== "auto" && protocol !== "4" && protocol !== "5")
    throw new UsageError(`--protocol must be 5, 4 (MQTT 3.1.1) or auto, not ${protocol} (${s.protocol.origin})`);
  // ctlSettings left one of the two in use, by the same precedence as every setting.
  const passwordFile = s.passwordFile.value;
  const password = passwordFile ? readPasswordFile(passwordFile) : s.password.value;
  // A connection that fails says where its address came from, and how to give another.
  const origin =
    s.broker.origin === "default"
      ? `the default: give --broker, OUTPOST_CTL_BROKER or broker: in ${s.file ?? "~/.outpost/ctl.yaml"}`
      : s.broker.origin.startsWith("in ")
        ? s.broker.origin
        : `from ${s.broker.origin}`;
  return {
    url,
    failover,
    commandForm,
    username: s.username.value,
    password,
    ca: s.ca.value,
    cert: s.cert.value,
    key: s.tlsKey.value,
    prefix: s.prefix.value ?? "outpost/v1",
    origin,
    ...(protocol === "auto" ? {} : { protocolVersion: protocol === "4" ? 4 : 5 }),
  };
}

export function durationFlag(name: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const ms = parseDuration(text);
  if (ms === undefined || ms <= 0) throw new UsageError(`--${name} must be a duration like 10s, not ${text}`);
  return ms;
}

/** The operator's private key, with a message that names the file and the fix when it is not one. */
export function readPrivateKey(file: string) {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new UsageError(`--key ${file}: ${errorMessage(err)}`);
  }
  if (text.startsWith("ed25519:") || text.includes("BEGIN PUBLIC KEY")) {
    const privateFile = file.endsWith(".pub") ? `${file.slice(0, -4)}.key` : "the .key file";
    throw new UsageError(
      `--key ${file} is a public key: --key takes the private key that 'outpost keygen' wrote beside it (${privateFile})`,
    );
  }
  try {
    return parsePrivateKey(text);
  } catch (err) {
    throw new UsageError(`--key ${file}: ${errorMessage(err)} (expected the .key file that 'outpost keygen' wrote)`);
  }
}
