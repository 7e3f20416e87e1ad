// `ctl trust` and `ctl forget`, and what every ctl subcommand that counts answers shares: the pins, and the
// exit code an answer that did not count earns.
import { parseArgs } from "node:util";
import { checkAnswer } from "../commands/answers.ts";
import { fingerprintOf, parsePublicKey } from "../commands/keys.ts";
import { errorMessage } from "../core/errors.ts";
import { deviceTopics } from "../mqtt/topics.ts";
import { AnswerTrust, printable, type Refusal } from "./answer-trust.ts";
import { retainedText, withClient } from "./ctl-client.ts";
import { BROKER_FLAGS, brokerOptions, type CtlSettings, ctlSettings, readBoundedText } from "./ctl-settings.ts";
import { EXIT, type Host, UsageError } from "./host.ts";
import { brokerId, KnownDevices, type Pin } from "./known-devices.ts";

/** The pin file in use: --known-devices, OUTPOST_CTL_KNOWN_DEVICES, knownDevices: in ctl.yaml, or the default. */
export function knownDevices(settings: CtlSettings): KnownDevices {
  const path = settings.knownDevices.value;
  return path === undefined ? KnownDevices.none() : KnownDevices.load(path);
}

/**
 * What checks answers for one ctl run; a pin `--accept-new` adds is said on stderr. `--accept-new` is for one
 * named device: in a group, whoever answered first for any id would be pinned and counted toward --expect.
 */
export function answerTrust(
  host: Host,
  settings: CtlSettings,
  o: { url: string; failover?: readonly string[]; prefix: string },
  acceptNew: boolean,
  group = false,
): AnswerTrust {
  if (acceptNew && group) {
    throw new UsageError("--accept-new pins one named device, not a group's: pin members with ctl trust or deploy.sh");
  }
  return new AnswerTrust({
    pins: knownDevices(settings),
    broker: o.url,
    ...(o.failover ? { failover: o.failover } : {}),
    prefix: o.prefix,
    acceptNew,
    onPinned: (pin) =>
      host.stderr.write(
        `outpost: pinned ${pin.device} ${fingerprintOf(pin.key)} (--accept-new) in ${settings.knownDevices.value}\n`,
      ),
  });
}

/** Says once per device and reason why an answer did not count. */
export function refusalPrinter(host: Host): (device: string, verdict: Refusal, what?: string) => void {
  const said = new Set<string>();
  return (device, verdict, what) => {
    const who = printable(device, 64);
    const line =
      verdict.trust === "forged"
        ? `outpost: ${who}: FORGED answer refused: ${verdict.why}\n`
        : `outpost: ${who}: answer not counted: ${verdict.why}${what ? `; it said ${printable(what)}` : ""}\n`;
    if (said.has(line)) return;
    said.add(line);
    host.stderr.write(line);
  };
}

/**
 * The exit code of a run whose counted answers gave `ok`: a forged answer seen wins (65), then an answer that
 * could not be verified (77), then what the counted answers say.
 */
export function trustCode(verdicts: Iterable<Refusal>, ok: boolean): number {
  let code: number = ok ? EXIT.OK : EXIT.FAILURE;
  for (const v of verdicts) {
    if (v.trust === "forged") return EXIT.FORGED;
    if (!ok) code = EXIT.UNVERIFIED;
  }
  return code;
}

const PIN_FLAGS = {
  ...BROKER_FLAGS,
  "public-key": { type: "string" },
  "any-broker": { type: "boolean" },
} as const;

/**
 * `ctl trust DEVICE FINGERPRINT`: pins the key the device's retained status offers, once its fingerprint is
 * the one given (what `install` printed on the device) and the status is signed by it. `--public-key FILE|-`:
 * the key itself, fetched by a channel already trusted (scripts/deploy.sh reads device.pub over ssh); then
 * FINGERPRINT is optional, and no broker is asked.
 */
export async function trustCommand(host: Host, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, options: PIN_FLAGS, allowPositionals: true });
  const [device, fingerprint, ...extra] = positionals;
  if (device === undefined || extra.length > 0 || (fingerprint === undefined && values["public-key"] === undefined)) {
    throw new UsageError("ctl trust: expected DEVICE FINGERPRINT (what install printed), or DEVICE --public-key FILE");
  }
  const wanted = fingerprint === undefined ? undefined : fingerprint.replace(/^(SHA256:)?/, "SHA256:");
  const settings = ctlSettings(host, values);
  const o = brokerOptions(settings);
  const pins = knownDevices(settings);
  const broker = values["any-broker"] ? "*" : brokerId(o.url);
  let key: string;
  let from: string;
  if (values["public-key"] !== undefined) {
    key = await readPublicKey(host, values["public-key"]);
    from = `from ${values["public-key"] === "-" ? "standard input" : values["public-key"]}`;
  } else {
    const status = await retainedStatusOf(o, device);
    if (!status) {
      host.stderr.write(`outpost: ${device} has no retained status under ${deviceTopics(o.prefix, device).status}\n`);
      return EXIT.FAILURE;
    }
    const offered = status.body.deviceKey;
    if (typeof offered !== "string") {
      const version = typeof status.body.version === "string" ? ` (version ${status.body.version})` : "";
      host.stderr.write(`outpost: ${device}'s status offers no key: its agent${version} does not sign answers\n`);
      return EXIT.UNVERIFIED;
    }
    key = offered;
    // The fingerprint the operator compared is what authenticates the key. A signature that fails is refused
    // all the same; an unsigned status is the last will (`lost`), which the broker sent for an offline device.
    try {
      if (checkAnswer(parsePublicKey(key), device, status.topic, status.text).state === "invalid") {
        throw new Error("its status is not signed by the key it offers");
      }
    } catch (err) {
      host.stderr.write(`outpost: ${device}: not pinned: ${errorMessage(err)}\n`);
      return EXIT.FORGED;
    }
    from = `from its status on ${o.url}`;
  }
  const actual = fingerprintOf(key);
  if (wanted !== undefined && wanted !== actual) {
    host.stderr.write(
      `outpost: ${device}: NOT PINNED: its key is ${actual}, not ${wanted}. Check the fingerprint install printed on the device; if it matches ${wanted}, another client is speaking as ${device}\n`,
    );
    return EXIT.FORGED;
  }
  const existing = pins.find(broker, o.prefix, device);
  if (existing && existing.key !== key) {
    host.stderr.write(
      `outpost: ${device} is pinned with another key (${fingerprintOf(existing.key)}) in ${pins.path}: if it was re-installed, outpost ctl forget ${device} first\n`,
    );
    return EXIT.FORGED;
  }
  if (existing) {
    host.stdout.write(`${device} ${actual} already pinned in ${pins.path}\n`);
    return EXIT.OK;
  }
  const pin: Pin = { broker, prefix: o.prefix, device, key, note: `trusted ${new Date().toISOString()} ${from}` };
  pins.pin(pin);
  pins.save();
  host.stdout.write(`pinned ${device} ${actual} (${broker} ${o.prefix}) in ${pins.path}\n`);
  return EXIT.OK;
}

/** `ctl forget DEVICE...`: removes the pins (a re-installed device, a device retired). 1 if none was pinned. */
export function forgetCommand(host: Host, args: string[]): number {
  const { values, positionals } = parseArgs({ args, options: PIN_FLAGS, allowPositionals: true });
  if (positionals.length === 0) throw new UsageError("ctl forget: expected DEVICE...");
  const settings = ctlSettings(host, values);
  const o = brokerOptions(settings);
  const pins = knownDevices(settings);
  let missing = 0;
  for (const device of positionals) {
    const n = pins.forget(values["any-broker"] ? "*" : brokerId(o.url), o.prefix, device);
    if (n === 0) missing += 1;
    host.stdout.write(n > 0 ? `forgot ${device}\n` : `${device} was not pinned\n`);
  }
  pins.save();
  return missing > 0 ? EXIT.FAILURE : EXIT.OK;
}

async function readPublicKey(host: Host, from: string): Promise<string> {
  let text: string | undefined;
  if (from === "-") {
    if (!host.stdin) throw new UsageError("--public-key -: no standard input");
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of host.stdin) {
      size += (chunk as Buffer).length;
      if (size > 4096) throw new UsageError("--public-key -: more than 4 KiB, not a device.pub");
      chunks.push(Buffer.from(chunk as Buffer));
    }
    text = Buffer.concat(chunks).toString("utf8");
  } else if (/^ed25519:/.test(from)) {
    text = from;
  } else {
    text = readBoundedText(from, 4096, true, "a device.pub");
  }
  const key = (text ?? "").trim();
  try {
    parsePublicKey(key);
  } catch (err) {
    throw new UsageError(`--public-key ${from}: ${errorMessage(err)}`);
  }
  return key;
}

/** A device's retained status: its exact text, for the signature. */
async function retainedStatusOf(
  o: ReturnType<typeof brokerOptions>,
  device: string,
): Promise<{ topic: string; text: string; body: Record<string, unknown> } | undefined> {
  const topic = deviceTopics(o.prefix, device).status;
  const text = await withClient(o, (client) => retainedText(client, topic, 2000));
  if (text === undefined) return undefined;
  try {
    return { topic, text, body: JSON.parse(text) as Record<string, unknown> };
  } catch {
    return undefined;
  }
}
