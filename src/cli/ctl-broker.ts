// `outpost ctl broker check`: what a broker does with what Outpost relies on, learned by trying each thing on it,
// so that a user learns the gaps before a fleet does (docs/broker.md has the matrix of tested brokers).
import { randomBytes } from "node:crypto";
import { parseArgs } from "node:util";
import type { IClientOptions, IConnackPacket, MqttClient } from "mqtt";
import { sleep } from "../core/clock.ts";
import { errorMessage } from "../core/errors.ts";
import { BROKER_URL } from "../core/patterns.ts";
import { endpointOptions, readPasswordFile } from "../mqtt/options.ts";
import { deviceTopics, groupCommandPrefix } from "../mqtt/topics.ts";
import { type Dots, probeDots, probeRetainedWildcard, within } from "./broker-probe.ts";
import { type BrokerOptions, connectBroker, connectOnce } from "./ctl-client.ts";
import { BROKER_FLAGS, brokerOptions, ctlSettings } from "./ctl-settings.ts";
import { EXIT, type Host, UsageError } from "./host.ts";

interface Finding {
  name: string;
  value: string | number | boolean | null;
  note: string;
}

const WAIT_MS = 3000;

export async function brokerCommand(host: Host, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      ...BROKER_FLAGS,
      "device-username": { type: "string" },
      "device-password-file": { type: "string" },
      "device-broker": { type: "string" },
    },
    allowPositionals: true,
  });
  if (positionals[0] !== "check" || positionals.length !== 1) throw new UsageError("usage: ctl broker check");
  const o = brokerOptions(ctlSettings(host, values));
  const device =
    values["device-username"] === undefined
      ? undefined
      : {
          username: values["device-username"],
          password: values["device-password-file"] ? readPasswordFile(values["device-password-file"]) : undefined,
        };
  const found: Finding[] = [];
  const say = (name: string, value: Finding["value"], note = "") => found.push({ name, value, note });

  // MQTT 5 first, on its own: the answer, a refusal, or a close without CONNACK (RabbitMQ 3.10).
  const base = { ...endpointOptions(o), reconnectPeriod: 0, connectTimeout: 10_000, clean: true };
  let v5: MqttClient | undefined;
  try {
    v5 = await connectOnce({ ...base, clientId: probeId(), protocolVersion: 5 });
    say("mqtt5", true, "MQTT 5 CONNECT answered");
  } catch (err) {
    say("mqtt5", false, errorMessage(err));
  }
  const connack = (v5 as unknown as { connackPacket?: IConnackPacket } | undefined)?.connackPacket?.properties;
  await v5?.endAsync(true);
  const client = await connectBroker(o);
  try {
    const protocol = client.options.protocolVersion === 5 ? "5" : "3.1.1";
    say(
      "connected",
      protocol,
      `${client.options.host}:${client.options.port}${v5 ? "" : ", by the fallback to 3.1.1"}`,
    );
    const max = connack?.maximumPacketSize;
    say(
      "maxPacketSize",
      max ?? null,
      max ? "announced in CONNACK" : "not announced: mqtt.maxPacketSize guards the agent",
    );
    const dots: Dots = await probeDots(client, o.prefix, WAIT_MS);
    say(
      "dotsInTopicLevels",
      dots,
      dots === "split"
        ? "'.' becomes a level separator: ctl sends flat command names (task_list); ids and groups need no dots"
        : dots === "kept"
          ? "command names travel as they are (task.list)"
          : "the probe did not come back (an ACL?)",
    );
    const retained = await probeRetainedWildcard(client, o.prefix, WAIT_MS);
    say(
      "retainedThroughWildcards",
      retained ?? null,
      retained === false
        ? "only exact subscriptions get retained messages: ctl devices pings every device instead"
        : retained
          ? "ctl devices reads the retained statuses"
          : "no retained message came back at all",
    );
    const tried = async <T>(what: () => Promise<T>): Promise<T | string> => {
      try {
        return await what();
      } catch (err) {
        return `failed: ${errorMessage(err)}`;
      }
    };
    const will = await tried(() => willDelivered(client, base, o));
    say(
      "will",
      typeof will === "string" ? null : will,
      typeof will === "string" ? will : "a vanished client's will is published",
    );
    const kept = await tried(() => sessionKept(client, base, o));
    say(
      "persistentSessions",
      typeof kept === "string" ? null : kept,
      typeof kept === "string" ? kept : "QoS 1 messages kept for a client that was away",
    );
    if (device) {
      // Where devices log in: another listener, on a broker that keeps devices and operators apart (the shipped
      // mosquitto configuration), with ctl's TLS settings.
      const at = values["device-broker"];
      if (at !== undefined && !BROKER_URL.test(at))
        throw new UsageError(`--device-broker must be an mqtt:// URL, not ${at}`);
      const deviceBase = at === undefined ? base : { ...base, ...endpointOptions({ ...o, url: at }) };
      const c = await tried(() => confined(client, deviceBase, o, device));
      const [value, note] = typeof c === "string" ? [null, c] : c;
      say("aclConfinesDevice", value, note);
    } else say("aclConfinesDevice", null, "not checked: give --device-username and --device-password-file");
  } finally {
    await client.endAsync(true);
  }
  if (values.json) host.stdout.write(`${JSON.stringify(Object.fromEntries(found.map((f) => [f.name, f])))}\n`);
  else {
    const width = Math.max(...found.map((f) => f.name.length));
    for (const f of found) host.stdout.write(`${f.name.padEnd(width)}  ${String(f.value).padEnd(7)}  ${f.note}\n`);
  }
  return EXIT.OK;
}

function probeId(): string {
  return `outpost-ctl-probe-${randomBytes(6).toString("hex")}`;
}

function probeBase(o: BrokerOptions & { prefix: string }): string {
  return groupCommandPrefix(o.prefix, `_probe-${randomBytes(6).toString("hex")}`);
}

/** Resolves with whether a message came on `topic` within WAIT_MS, subscribed before `act` runs. */
async function arrives(client: MqttClient, topic: string, act: () => Promise<void>): Promise<boolean> {
  let seen = false;
  const on = (t: string, payload: Buffer) => {
    if (t === topic && payload.length > 0) seen = true;
  };
  client.on("message", on);
  try {
    if (!(await within(client.subscribeAsync(topic, { qos: 1 }), WAIT_MS)))
      throw new Error(`cannot subscribe to ${topic}`);
    await act();
    for (let waited = 0; !seen && waited < WAIT_MS; waited += 50) await sleep(50);
    return seen;
  } finally {
    client.off("message", on);
    await within(client.unsubscribeAsync(topic), WAIT_MS);
  }
}

async function willDelivered(client: MqttClient, base: IClientOptions, o: BrokerOptions & { prefix: string }) {
  const topic = `${probeBase(o)}will`;
  return arrives(client, topic, async () => {
    const protocolVersion = client.options.protocolVersion;
    const dying = await connectOnce({
      ...base,
      clientId: probeId(),
      protocolVersion,
      will: { topic, payload: Buffer.from("lost"), qos: 1, retain: false },
    });
    // Gone without a DISCONNECT: what a power cut looks like to the broker.
    (dying.stream as unknown as { destroy(): void }).destroy();
    dying.end(true);
  });
}

async function sessionKept(client: MqttClient, base: IClientOptions, o: BrokerOptions & { prefix: string }) {
  const topic = `${probeBase(o)}session`;
  const clientId = probeId();
  const protocolVersion = client.options.protocolVersion;
  const persistent: IClientOptions = {
    ...base,
    clientId,
    protocolVersion,
    clean: false,
    ...(protocolVersion === 5 ? { properties: { sessionExpiryInterval: 60 } } : {}),
  };
  try {
    const first = await connectOnce(persistent);
    await within(first.subscribeAsync(topic, { qos: 1 }), WAIT_MS);
    await within(first.endAsync(), WAIT_MS);
    await within(client.publishAsync(topic, "kept", { qos: 1 }), WAIT_MS);
    let kept = false;
    const again = await connectOnce(persistent, (t) => {
      if (t === topic) kept = true;
    });
    for (let waited = 0; !kept && waited < WAIT_MS; waited += 50) await sleep(50);
    await within(again.endAsync(), WAIT_MS);
    return kept;
  } finally {
    // Ends the session again, whatever came of the probe: nothing of it stays on the broker.
    const clean = await connectOnce({ ...persistent, clean: true, properties: {} }).catch(() => undefined);
    if (clean) await within(clean.endAsync(), WAIT_MS);
  }
}

/**
 * With a device's login: can it write another device's status, or read another device's commands? Confined
 * means neither came through (docs/broker.md's ACL). The other device is a name no device has.
 */
async function confined(
  client: MqttClient,
  base: IClientOptions,
  o: BrokerOptions & { prefix: string },
  login: { username: string; password: string | undefined },
): Promise<[boolean | null, string]> {
  let dev: MqttClient;
  try {
    dev = await connectOnce({
      ...base,
      clientId: login.username,
      username: login.username,
      ...(login.password === undefined ? {} : { password: login.password }),
      protocolVersion: client.options.protocolVersion,
    });
  } catch (err) {
    return [null, `the device login was refused: ${errorMessage(err)}`];
  }
  try {
    const other = deviceTopics(o.prefix, `probe-${randomBytes(4).toString("hex")}`);
    const wrote = await arrives(client, other.status, async () => {
      // A broker may close the connection over a refused publish, which MQTT.js then never settles.
      await within(dev.publishAsync(other.status, "forged", { qos: 1 }), WAIT_MS);
    });
    const command = other.command("ping");
    let read = false;
    dev.on("message", (t) => {
      if (t === command) read = true;
    });
    await within(dev.subscribeAsync(command, { qos: 1 }), WAIT_MS);
    await within(client.publishAsync(command, "probe", { qos: 1 }), WAIT_MS);
    for (let waited = 0; !read && waited < WAIT_MS; waited += 50) await sleep(50);
    const leaks = [wrote ? "wrote another device's status" : "", read ? "read another device's commands" : ""];
    const said = leaks.filter(Boolean).join(" and ");
    return said ? [false, `${login.username} ${said}`] : [true, `${login.username} stays under its own topics`];
  } finally {
    await within(dev.endAsync(true), WAIT_MS);
  }
}
