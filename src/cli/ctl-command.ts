import { createPublicKey } from "node:crypto";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import type { MqttClient } from "mqtt";
import type { ReplyBody } from "../commands/envelope.ts";
import { publicKeyText } from "../commands/keys.ts";
import { errorMessage } from "../core/errors.ts";
import { allDevices, deviceTopics } from "../mqtt/topics.ts";
import { type BrokerOptions, connectBroker, DeviceCaller, type Signer } from "./ctl-client.ts";
import {
  BROKER_FLAGS,
  brokerOptions,
  ctlSettings,
  durationFlag,
  printCtlSettings,
  readPrivateKey,
} from "./ctl-settings.ts";
import { EXIT, type Host, UsageError } from "./host.ts";
import { applyMessage, type DeviceView, viewUpdate } from "./view.ts";

export const CTL_HELP = `Usage: outpost ctl <devices|watch|call|update|config> [options]

  devices                         devices from their retained status: id, state, version, and last seen
                                  (the latest status or telemetry seen while listening, --wait 1s)
  watch [DEVICE...]               live telemetry of all (or the named) devices until Ctrl-C
  call DEVICE COMMAND             sign a request, publish it, print the reply; exit 0 on success
       [--params JSON|@FILE|-] [--key FILE] [--timeout 10s] [--group] [--expect N] [--validity 1m] [--wait]
       --group: DEVICE names a group (device.groups); replies are collected from every member
       until --timeout, or until --expect N devices have answered
       a device with no retained status fails at once; --wait sends anyway and waits --timeout
  update DEVICE RELEASE_DIR       send the signed release in RELEASE_DIR (outpost release) and serve its
       [--group G --expect N]     chunks over MQTT to each device that asks (only what a device lacks; a cut
       [--http URL] [--timeout 10m] [--until committed|staged]
                                  transfer resumes); a progress bar per device until each one committed,
                                  rolled back or failed. --http URL: devices fetch from there instead;
                                  --until staged: stop once staged (a device without the installer units
                                  stages only then)
  config                          the settings below in use, and where each comes from

Flags go anywhere, before or after the subcommand.

Broker (a flag wins over the environment, which wins over ~/.outpost/ctl.yaml: broker, username,
passwordFile, ca, cert, tlsKey, prefix, protocol, key; OUTPOST_CTL_CONFIG names another file):
  --broker URL          OUTPOST_CTL_BROKER     mqtt://host:1883 or mqtts://host:8883 (default mqtt://127.0.0.1:1883)
  --username NAME       OUTPOST_CTL_USERNAME
  --password-file FILE  OUTPOST_CTL_PASSWORD   (the variable holds the password itself)
  --ca FILE, --cert FILE, --tls-key FILE       TLS trust and client certificate
  --prefix TOPIC        OUTPOST_CTL_PREFIX     topic prefix (default outpost/v1)
  --protocol 5|4|auto   OUTPOST_CTL_PROTOCOL   MQTT version (default auto: 5, then 3.1.1 if the broker refuses
                                               5 or closes it unanswered)
  --key FILE            OUTPOST_CTL_KEY        operator private key from 'outpost keygen'
  --json                machine-readable output (one JSON document per line)

Exit codes: 0 success, 1 the command failed or no reply in time (the error code is printed), 64 usage,
69 no connection to the broker (refused, unreachable, or closed without answering CONNECT).`;

const SUBCOMMANDS = new Set(["devices", "watch", "call", "update", "config"]);
/** Flags that take a value in every subcommand that has them. */
const VALUE_FLAGS = new Set([
  ...Object.entries(BROKER_FLAGS).flatMap(([name, f]) => (f.type === "string" ? [name] : [])),
  ...["key", "params", "timeout", "validity", "expect", "http", "until", "count"],
]);
/** Flags that take a value in one subcommand and none in another (update's --group NAME, call's --group). */
const EITHER_FLAGS = new Set(["group", "wait"]);

export async function ctlCommand(host: Host, args: string[]): Promise<number> {
  // Flags go anywhere, before the subcommand too (`ctl --key FILE call ...`), as with git and kubectl.
  let at = 0;
  while (at < args.length && args[at]?.startsWith("-")) {
    const arg = args[at] ?? "";
    const name = arg.replace(/^--?/, "").split("=")[0] ?? "";
    const next = args[at + 1];
    const takesValue =
      !arg.includes("=") &&
      (VALUE_FLAGS.has(name) ||
        (EITHER_FLAGS.has(name) && next !== undefined && !next.startsWith("-") && !SUBCOMMANDS.has(next)));
    at += takesValue ? 2 : 1;
  }
  const sub = args[at];
  const rest = [...args.slice(0, at), ...args.slice(at + 1)];
  switch (sub) {
    case "devices":
      return devices(host, rest);
    case "watch":
      return watch(host, rest);
    case "call":
      return call(host, rest);
    case "update": {
      const { ctlUpdate } = await import("./ctl-update.ts");
      return ctlUpdate(host, rest);
    }
    case "config": {
      const { values } = parseArgs({ args: rest, options: { ...BROKER_FLAGS, key: { type: "string" } } });
      printCtlSettings(host, ctlSettings(host, values));
      return EXIT.OK;
    }
    default:
      throw new UsageError(sub === undefined ? "ctl: missing subcommand" : `ctl: unknown subcommand ${sub}`);
  }
}

/** How long retained messages may take to arrive after a subscription. */
const RETAINED_WAIT_MS = 1000;

/** Whether a retained message is held on `topic` (it arrives right after the subscription). */
async function retainedStatus(client: MqttClient, topic: string): Promise<boolean> {
  let seen: (t: string, payload: Buffer) => void = () => {};
  let timer: NodeJS.Timeout | undefined;
  const found = new Promise<boolean>((resolve) => {
    seen = (t, payload) => {
      if (t === topic && payload.length > 0) resolve(true);
    };
    timer = setTimeout(() => resolve(false), RETAINED_WAIT_MS);
  });
  client.on("message", seen);
  try {
    await client.subscribeAsync(topic, { qos: 1 });
    const known = await found;
    await client.unsubscribeAsync(topic);
    return known;
  } finally {
    clearTimeout(timer);
    client.off("message", seen);
  }
}

async function withClient<T>(o: BrokerOptions, use: (client: MqttClient) => Promise<T>): Promise<T> {
  const client = await connectBroker(o);
  try {
    return await use(client);
  } finally {
    await client.endAsync();
  }
}

async function devices(host: Host, args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { ...BROKER_FLAGS, wait: { type: "string" } },
    allowPositionals: false,
  });
  const o = brokerOptions(ctlSettings(host, values));
  const waitMs = durationFlag("wait", values.wait, 1000);
  const seen = new Map<string, DeviceView>();
  await withClient(o, async (client) => {
    client.on("message", (topic, payload) => {
      try {
        applyMessage(seen, o.prefix, topic, payload);
      } catch {
        // A status that is not JSON is not one of ours; leave it out.
      }
    });
    // Retained statuses arrive right after the subscription; `--wait` bounds how long stragglers may take. Telemetry
    // seen meanwhile makes LAST SEEN the latest message from the device, not the time of its last status.
    await client.subscribeAsync([allDevices(o.prefix, "status"), allDevices(o.prefix, "telemetry")], { qos: 1 });
    await new Promise((resolve) => setTimeout(resolve, waitMs));
  });
  const rows = [...seen.values()]
    .filter((d) => d.status !== undefined)
    .sort((a, b) => a.id.localeCompare(b.id))
    .map((d) => {
      const s = d.status ?? {};
      const t = d.telemetry ?? {};
      const times = [s.ts, t.ts].filter((x): x is number => typeof x === "number");
      const ts = times.length > 0 ? Math.max(...times) : undefined;
      return {
        id: d.id,
        state: String(s.state ?? "unknown"),
        version: String(s.version ?? "-"),
        lastSeen: ts === undefined ? "-" : new Date(ts).toISOString(),
        ago: ts === undefined ? "-" : ago(Date.now() - ts),
      };
    });
  if (values.json) {
    for (const row of rows) host.stdout.write(`${JSON.stringify(row)}\n`);
    return EXIT.OK;
  }
  const table = [
    ["DEVICE", "STATE", "VERSION", "LAST SEEN"],
    ...rows.map((r) => [r.id, r.state, r.version, `${r.lastSeen} (${r.ago})`]),
  ];
  const widths = [0, 1, 2].map((i) => Math.max(...table.map((row) => (row[i] ?? "").length)));
  for (const row of table) {
    host.stdout.write(`${row.map((cell, i) => (i < 3 ? cell.padEnd(widths[i] ?? 0) : cell)).join("  ")}\n`);
  }
  if (rows.length === 0) host.stderr.write(`outpost: no device status under ${allDevices(o.prefix, "status")}\n`);
  return EXIT.OK;
}

function ago(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s}s ago`;
  if (s < 7200) return `${Math.round(s / 60)}m ago`;
  return `${Math.round(s / 3600)}h ago`;
}

async function watch(host: Host, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: { ...BROKER_FLAGS, count: { type: "string" } },
    allowPositionals: true,
  });
  const o = brokerOptions(ctlSettings(host, values));
  const count = values.count === undefined ? undefined : Number(values.count);
  if (count !== undefined && !(Number.isInteger(count) && count > 0))
    throw new UsageError("--count must be a positive integer");
  const targets = positionals.length > 0 ? positionals : ["+"];
  const tty = host.stdout.isTTY === true && !values.json;
  const seen = new Map<string, DeviceView>();
  const header = [`outpost ctl watch ${o.url} (${o.prefix})      Ctrl-C stops`];
  let lost = false;
  await withClient(o, async (client) => {
    let telemetry = 0;
    let finish: () => void = () => {};
    const finished = new Promise<void>((resolve) => {
      finish = resolve;
    });
    client.on("message", (topic, payload) => {
      try {
        const got = applyMessage(seen, o.prefix, topic, payload);
        if (!got) return;
        if (values.json)
          host.stdout.write(
            `${JSON.stringify({ device: got.device.id, kind: got.kind, body: got.kind === "status" ? got.device.status : got.device.telemetry })}\n`,
          );
        else host.stdout.write(viewUpdate(seen, got, tty, header));
        if (got.kind === "telemetry") telemetry += 1;
        if (count !== undefined && telemetry >= count) finish();
      } catch (err) {
        host.stderr.write(`outpost: ${topic}: ${errorMessage(err)}\n`);
      }
    });
    let ended = false;
    client.on("close", () => {
      lost = !ended;
      finish();
    });
    await client.subscribeAsync(
      targets.flatMap((d) => {
        const t = deviceTopics(o.prefix, d);
        return [t.status, t.telemetry, t.telemetryFull];
      }),
      { qos: 0 },
    );
    // Retained statuses come right after the subscription: a named device without one is probably a typo.
    const notice = setTimeout(() => {
      for (const d of targets) {
        if (d !== "+" && !seen.get(d)?.status) {
          host.stderr.write(
            `outpost: no device ${d} has a retained status under ${deviceTopics(o.prefix, d).status}; waiting\n`,
          );
        }
      }
    }, RETAINED_WAIT_MS);
    await Promise.race([finished, host.stopRequested]);
    clearTimeout(notice);
    ended = true;
  });
  if (lost) {
    host.stderr.write(`outpost: the connection to ${o.url} was closed\n`);
    return EXIT.FAILURE;
  }
  return EXIT.OK;
}

/**
 * `--params JSON`, `--params @FILE` or `--params -` (standard input): tensors and images are larger than one
 * shell argument may be (128 KiB on Linux).
 */
async function readParams(host: Host, flag: string): Promise<unknown> {
  let text = flag;
  let from = "--params";
  if (flag === "-") {
    if (!host.stdin) throw new UsageError("--params -: no standard input");
    const chunks: Buffer[] = [];
    for await (const chunk of host.stdin) chunks.push(Buffer.from(chunk as Buffer));
    text = Buffer.concat(chunks).toString("utf8");
    from = "--params - (standard input)";
  } else if (flag.startsWith("@")) {
    try {
      text = readFileSync(flag.slice(1), "utf8");
    } catch (err) {
      throw new UsageError(`--params ${flag}: ${errorMessage(err)}`);
    }
    from = `--params ${flag}`;
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new UsageError(`${from} must be JSON, not ${text.slice(0, 80)}`);
  }
}

async function call(host: Host, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      ...BROKER_FLAGS,
      key: { type: "string" },
      params: { type: "string" },
      timeout: { type: "string" },
      validity: { type: "string" },
      group: { type: "boolean" },
      expect: { type: "string" },
      unsigned: { type: "boolean" },
      wait: { type: "boolean" },
    },
    allowPositionals: true,
  });
  const [target, command, ...extra] = positionals;
  if (target === undefined || command === undefined || extra.length > 0) {
    throw new UsageError("ctl call: expected DEVICE COMMAND");
  }
  const params = values.params === undefined ? undefined : await readParams(host, values.params);
  const expect = values.expect === undefined ? undefined : Number(values.expect);
  if (expect !== undefined && !(Number.isInteger(expect) && expect > 0))
    throw new UsageError("--expect must be a positive integer");
  const timeoutMs = durationFlag("timeout", values.timeout, 10_000);
  const validityMs = durationFlag("validity", values.validity, 60_000);
  const settings = ctlSettings(host, values);
  const keyFile = settings.key.value;
  let signer: Signer | undefined;
  if (!values.unsigned) {
    if (keyFile === undefined)
      throw new UsageError(
        "ctl call: --key FILE (or OUTPOST_CTL_KEY, or key: in ~/.outpost/ctl.yaml) is needed to sign",
      );
    const privateKey = readPrivateKey(keyFile);
    signer = { privateKey, publicText: publicKeyText(createPublicKey(privateKey)) };
  }
  const o = brokerOptions(settings);
  const print = (reply: ReplyBody) => {
    if (values.json) host.stdout.write(`${JSON.stringify(reply)}\n`);
    else if (reply.state === "executing") {
      host.stderr.write(
        `${reply.device}: ${reply.state}${reply.progress === undefined ? "" : ` ${JSON.stringify(reply.progress)}`}\n`,
      );
    }
  };
  if (!values.group && !values.wait) {
    // A device that never connected has no retained status: say so now rather than after the whole timeout.
    const known = await withClient(o, (client) => retainedStatus(client, deviceTopics(o.prefix, target).status));
    if (!known) {
      host.stderr.write(
        `outpost: no device ${target} has a retained status under ${deviceTopics(o.prefix, target).status} (is the id right? --wait sends anyway)\n`,
      );
      return EXIT.FAILURE;
    }
  }
  const result = await withClient(o, (client) =>
    new DeviceCaller(client, o.prefix, signer).call({
      command,
      params,
      ...(values.group ? { group: target } : { device: target }),
      timeoutMs,
      validityMs,
      expect,
      unsigned: values.unsigned === true,
      onReply: print,
    }),
  );
  let ok = result.finals.length > 0;
  for (const reply of result.finals) {
    if (reply.state === "succeeded") {
      if (!values.json) {
        const text = JSON.stringify(reply.result, null, values.group ? undefined : 2);
        host.stdout.write(values.group ? `${reply.device}  succeeded  ${text}\n` : `${text}\n`);
      }
    } else {
      ok = false;
      host.stderr.write(`outpost: ${reply.device}: ${reply.error?.code ?? "FAILED"}: ${reply.error?.message ?? ""}\n`);
    }
  }
  if (result.finals.length === 0) {
    host.stderr.write(
      `outpost: TIMEOUT: no reply from ${values.group ? "group " : ""}${target} within ${timeoutMs}ms\n`,
    );
  } else if (values.group && result.timedOut && expect !== undefined) {
    ok = false;
    host.stderr.write(`outpost: TIMEOUT: ${result.finals.length} of ${expect} devices answered\n`);
  }
  return ok ? EXIT.OK : EXIT.FAILURE;
}
