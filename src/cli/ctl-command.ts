import { parseArgs } from "node:util";
import { errorMessage } from "../core/errors.ts";
import { deviceTopics } from "../mqtt/topics.ts";
import { RETAINED_WAIT_MS, withClient } from "./ctl-client.ts";
import { BROKER_FLAGS, brokerOptions, ctlSettings, printCtlSettings } from "./ctl-settings.ts";
import { EXIT, type Host, UsageError } from "./host.ts";
import { applyMessage, type DeviceView, viewUpdate } from "./view.ts";

export const CTL_HELP = `Usage: outpost ctl <devices|watch|call|logs|profile|diag|update|rollout|trust|forget|enroll|revoke|broker|config> [options]

  devices [--presence auto|retained|ping]
                                  devices from their retained status: id, state, version, KEY (pinned,
                                  unpinned, unsigned, will, FORGED) and last seen (the latest status or
                                  telemetry seen while listening, --wait 1s); where the broker shows retained
                                  messages only to exact subscriptions (RabbitMQ), from a signed ping that
                                  every device answers (needs --key); stderr says which was used
  broker check [--device-username U --device-password-file F [--device-broker URL]]
                                  what the broker supports: MQTT 5 or the fallback, dots in topic levels,
                                  retained messages through wildcards, wills, persistent sessions, the
                                  maximum packet size; with a device's login, whether its ACL confines it
  watch [DEVICE...]               live telemetry of all (or the named) devices until Ctrl-C
  call DEVICE COMMAND             sign a request, publish it, print the reply; exit 0 on success
       [--params JSON|@FILE|-] [--key FILE] [--timeout 10s] [--group] [--expect N] [--validity 1m] [--wait]
       --group: DEVICE names a group (device.groups); replies are collected from every member
       until --timeout, or until --expect N devices have answered
       a device with no retained status fails at once; --wait sends anyway and waits --timeout
       --accept-new: pin a device not yet pinned from its signed status (as ssh's accept-new)
  logs DEVICE [--since 10m] [--level warn] [--component NAME] [--limit N] [--follow | --previous]
                                  the device's recent log lines (its ring of 1 MiB), sealed to a key of this
                                  run's own and checked against the device's signed answer; --json: the lines
                                  as the device wrote them, one JSON object each; --follow: the new lines
                                  every 2 s until Ctrl-C, through broker outages, saying any gap;
                                  --previous: the last lines of the run before this one, and how it ended
  profile DEVICE (--cpu 30s | --heap 30s | --heap-snapshot) [--worker N] [--out FILE] [--pprof]
                                  a CPU profile (.cpuprofile: Chrome DevTools, speedscope) or a sampling heap
                                  profile (.heapprofile) of the agent, or of task worker N (task.list), taken in
                                  its process (at most 60 s, one at a time), sealed like logs; --pprof: pprof's
                                  protobuf, gzipped, converted here; --heap-snapshot: a full .heapsnapshot,
                                  secrets scrubbed, for a key whose allow list names debug.heap-snapshot, and
                                  only while the unit's memory limit leaves twice the heap
  diag DEVICE [--out FILE]        one .tar.gz for a bug report: describe, the configuration (redacted), the
                                  recent logs and the run before's tail and ending, /metrics, the update
                                  journal and the run ledger; sealed like logs
  update DEVICE RELEASE_DIR       send the signed release in RELEASE_DIR (outpost release) and serve its
       [--group G --expect N]     chunks over MQTT to each device that asks (only what a device lacks; a cut
       [--http URL] [--timeout 10m] [--until committed|staged]
                                  transfer resumes); a progress bar per device until each one committed,
                                  rolled back or failed. --http URL: devices fetch from there instead;
                                  --until staged: stop once staged (a device without the installer units
                                  stages only then); --accept-new as for call
  rollout RELEASE_DIR... (--devices A,B,... | --all-pinned | --group G) [--waves 1,10%,50%,100%] [--seed S]
       [--canary D]... [--success 95%] [--soak 5m] [--failure 5%] [--min-finished 3] [--deadline 30m]
       [--cap N] [--approve] [--http URL] [--dry-run] [--rollouts FILE]
                                  a rollout in waves (docs/rollouts.md), one release per architecture:
                                  the plan frozen in ~/.outpost/rollouts.db, then driven here until it
                                  completes or pauses (a failure threshold crossed); --dry-run: the plan only
  rollout status [ID] [--all] | list | pause ID | resume ID | approve ID | abort ID [--reason TEXT]
                                  where a rollout stands per wave and why it waits; pause and abort act on
                                  its journal (a running driver sees it); resume drives it again (after a
                                  pause, a kill, or for devices that were offline); approve: the next wave
  trust DEVICE FINGERPRINT        pin the key the device's status offers once its fingerprint is the one
       [--public-key FILE|-|KEY]  install printed on the device; --public-key: the key itself (device.pub,
       [--any-broker]             as scripts/deploy.sh reads it over ssh); --any-broker: for every broker
  forget DEVICE...                remove the pins (a re-installed device has a new key)
  enroll DEVICE... --broker-dir DIR [--group G]... [--out DIR] [--device-url URL]
                                  broker logins of their own (docs/broker.md): a password line each in
                                  DIR/devices.passwd (mosquitto's $7$), their groups in DIR/devices.acl, and in
                                  OUT/<id>/ (default enroll/) the password file and the device's config lines;
                                  --operator NAME...: operators' logins (operators.passwd, operators.acl);
                                  --reader NAME...: read-only logins (dashboards, Home Assistant); the files
                                  get the group mosquitto (--broker-group G), which must read them
  revoke DEVICE... --broker-dir DIR  removes the logins, ACL lines and pins (--operator for operators)
  config                          the settings below in use, and where each comes from

Flags go anywhere, before or after the subcommand.

Broker (a flag wins over the environment, which wins over ~/.outpost/ctl.yaml: broker, username,
passwordFile, ca, cert, tlsKey, prefix, protocol, commandForm, key, knownDevices; OUTPOST_CTL_CONFIG names
another file):
  --broker URL[,URL]    OUTPOST_CTL_BROKER     mqtt://host:1883 or mqtts://host:8883 (default mqtt://127.0.0.1:1883);
                                               more URLs: the nodes of a cluster, tried in turn
  --username NAME       OUTPOST_CTL_USERNAME
  --password-file FILE  OUTPOST_CTL_PASSWORD   (the variable holds the password itself)
  --ca FILE, --cert FILE, --tls-key FILE       TLS trust and client certificate
  --prefix TOPIC        OUTPOST_CTL_PREFIX     topic prefix (default outpost/v1)
  --protocol 5|4|auto   OUTPOST_CTL_PROTOCOL   MQTT version (default auto: 5, then 3.1.1 if the broker refuses
                                               5 or closes it unanswered)
  --command-form auto|dotted|flat  OUTPOST_CTL_COMMAND_FORM  command names in topics: task.list or task_list
                                               (default auto: flat where the broker turns . into a level)
  --key FILE            OUTPOST_CTL_KEY        operator private key from 'outpost keygen'
  --known-devices FILE  OUTPOST_CTL_KNOWN_DEVICES  the pinned device keys (default ~/.outpost/known_devices)
  --json                machine-readable output (one JSON document per line)

Only answers a device signed with its pinned key count. Exit codes: 0 success, 1 the command failed or no
reply in time (the error code is printed), 64 usage, 65 a forged answer (bad signature, changed key, replayed),
69 no connection to the broker (refused, unreachable, or closed without answering CONNECT), 77 an answer that
cannot be verified (an unpinned device, an agent that does not sign).`;

const SUBCOMMANDS = new Set([
  "broker",
  "devices",
  "watch",
  "call",
  "logs",
  "profile",
  "diag",
  "update",
  "rollout",
  "trust",
  "forget",
  "enroll",
  "revoke",
  "config",
]);
/** Flags that take a value in every subcommand that has them. */
const VALUE_FLAGS = new Set([
  ...Object.entries(BROKER_FLAGS).flatMap(([name, f]) => (f.type === "string" ? [name] : [])),
  ...["key", "params", "timeout", "validity", "expect", "http", "until", "count", "public-key"],
  ...["broker-dir", "out", "device-url", "ha-prefix", "broker-group"],
  ...["devices", "waves", "seed", "canary", "success", "soak", "failure", "min-finished", "deadline", "cap"],
  ...["rollouts", "discover", "reason", "task", "presence", "device-username", "device-password-file"],
  ...["device-broker", "since", "level", "component", "limit", "cpu", "heap", "worker"],
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
    case "devices": {
      const { devicesCommand } = await import("./ctl-devices.ts");
      return devicesCommand(host, rest);
    }
    case "watch":
      return watch(host, rest);
    case "call": {
      const { callCommand } = await import("./ctl-call.ts");
      return callCommand(host, rest);
    }
    case "logs": {
      const { logsCommand } = await import("./ctl-logs.ts");
      return logsCommand(host, rest);
    }
    case "profile": {
      const { profileCommand } = await import("./ctl-profile.ts");
      return profileCommand(host, rest);
    }
    case "diag": {
      const { diagCommand } = await import("./ctl-diag.ts");
      return diagCommand(host, rest);
    }
    case "trust": {
      const { trustCommand } = await import("./ctl-trust.ts");
      return trustCommand(host, rest);
    }
    case "forget": {
      const { forgetCommand } = await import("./ctl-trust.ts");
      return forgetCommand(host, rest);
    }
    case "broker": {
      const { brokerCommand } = await import("./ctl-broker.ts");
      return brokerCommand(host, rest);
    }
    case "rollout": {
      const { rolloutCommand } = await import("./ctl-rollout.ts");
      return rolloutCommand(host, rest);
    }
    case "enroll": {
      const { enrollCommand } = await import("./ctl-enroll.ts");
      return enrollCommand(host, rest);
    }
    case "revoke": {
      const { revokeCommand } = await import("./ctl-enroll.ts");
      return revokeCommand(host, rest);
    }
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
