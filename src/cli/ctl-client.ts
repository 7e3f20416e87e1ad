import { randomBytes } from "node:crypto";
import type { Socket } from "node:net";
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import { z } from "zod";
import { requestDigest } from "../commands/answers.ts";
import { type CommandRequest, FINAL_STATES, newRequest, type ReplyBody, signPayload } from "../commands/envelope.ts";
import { errorMessage, OutpostError } from "../core/errors.ts";
import { redactUrl } from "../core/patterns.ts";
import { type BrokerEndpoint, endpointOptions, refusedMqtt5 } from "../mqtt/options.ts";
import { type CommandWire, deviceReplyTopic, deviceTopics, groupCommandPrefix, wireName } from "../mqtt/topics.ts";
import { type AnswerTrust, isRefusal, type Refusal, type Verdict } from "./answer-trust.ts";
import { type Dots, probeDots, splitDotsError } from "./broker-probe.ts";

/** How ctl writes command names in topics: found out from the broker (`auto`), or as told. */
export type CommandForm = "auto" | CommandWire;

export interface BrokerOptions extends BrokerEndpoint {
  protocolVersion?: 4 | 5;
  /** Brokers tried after `url`, in turn, when it cannot be reached (`--broker a,b`: the nodes of a cluster). */
  failover?: readonly string[];
}

/**
 * One connection attempt that settles either way: a CONNACK, an error, or a close before any CONNACK (RabbitMQ
 * 3.10 closes an MQTT 5 CONNECT without one). MQTT.js's connectAsync never settles on such a close, and with
 * nothing else pending the process would end with 0, as if it had succeeded.
 */
export function connectOnce(
  options: IClientOptions,
  onMessage?: (topic: string, payload: Buffer) => void,
): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(options);
    // Before CONNACK: a persistent session's queued messages come right after it.
    if (onMessage) client.on("message", onMessage);
    const settle = (err?: Error) => {
      client.removeListener("connect", onConnect);
      client.removeListener("error", onError);
      client.removeListener("close", onClose);
      if (!err) return resolve(client);
      client.end(true);
      reject(err);
    };
    const onConnect = () => settle();
    const onError = (err: Error) => settle(err);
    const onClose = () =>
      settle(
        new OutpostError(
          "MQTT_CLOSED",
          `the broker at ${options.host}:${options.port} closed the connection without answering CONNECT (MQTT ${options.protocolVersion === 5 ? "5" : "3.1.1"})`,
        ),
      );
    client.on("connect", onConnect);
    client.on("error", onError);
    client.on("close", onClose);
  });
}

/**
 * One operator connection: MQTT 5 if the broker speaks it, otherwise 3.1.1 (the demo's aedes refuses 5; RabbitMQ
 * 3.10 closes it unanswered). `protocolVersion` (`--protocol`) takes one version only. A connection that never
 * completes rejects (`MQTT_CLOSED` or the socket's error): `ctl` exits 69, never 0 having done nothing.
 */
export async function connectBroker(o: BrokerOptions & { origin?: string }): Promise<MqttClient> {
  const urls = [o.url, ...(o.failover ?? [])];
  const failures: string[] = [];
  for (const [i, url] of urls.entries()) {
    try {
      return await connectOne({ ...o, url });
    } catch (err) {
      if (i === urls.length - 1 && failures.length === 0) throw err;
      failures.push(errorMessage(err));
    }
  }
  throw new OutpostError("BROKER_UNAVAILABLE", failures.join("; "));
}

async function connectOne(o: BrokerOptions & { origin?: string }): Promise<MqttClient> {
  const base: IClientOptions = {
    ...endpointOptions(o),
    clientId: `outpost-ctl-${randomBytes(6).toString("hex")}`,
    clean: true,
    reconnectPeriod: 0,
    connectTimeout: 15_000,
  };
  let client: MqttClient;
  try {
    try {
      client = await connectOnce({ ...base, protocolVersion: o.protocolVersion ?? 5 });
    } catch (err) {
      const unanswered = (err as { code?: unknown }).code === "MQTT_CLOSED";
      if (!(o.protocolVersion === undefined && (refusedMqtt5(5, err) || unanswered))) throw err;
      client = await connectOnce({ ...base, protocolVersion: 4 });
    }
  } catch (err) {
    const origin = o.origin ? ` (${o.origin})` : "";
    // A password in the URL is never printed.
    const at = redactUrl(o.url);
    throw new OutpostError(
      "BROKER_UNAVAILABLE",
      `no connection to the broker at ${at}${origin}: ${errorMessage(err)}`,
      {
        cause: err,
      },
    );
  }
  // MQTT.js leaves Nagle on: every request/reply would wait about 40 ms for a delayed ACK.
  (client.stream as Partial<Socket> | undefined)?.setNoDelay?.(true);
  return client;
}

/** How long retained messages may take to arrive after a subscription. */
export const RETAINED_WAIT_MS = 1000;

/** The retained message held on `topic`, if any (it arrives right after the subscription, within `waitMs`). */
export async function retainedText(
  client: MqttClient,
  topic: string,
  waitMs = RETAINED_WAIT_MS,
): Promise<string | undefined> {
  let seen: (t: string, payload: Buffer) => void = () => {};
  let timer: NodeJS.Timeout | undefined;
  const found = new Promise<string | undefined>((resolve) => {
    seen = (t, payload) => {
      if (t === topic && payload.length > 0) resolve(payload.toString("utf8"));
    };
    timer = setTimeout(() => resolve(undefined), waitMs);
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

/** One connection for the length of `use`, ended after it either way. */
export async function withClient<T>(o: BrokerOptions, use: (client: MqttClient) => Promise<T>): Promise<T> {
  const client = await connectBroker(o);
  try {
    return await use(client);
  } finally {
    await client.endAsync();
  }
}

export interface Signer {
  privateKey: import("node:crypto").KeyObject;
  publicText: string;
}

export interface CallOptions {
  /** The request's id, when the caller must know it before the answers come (ctl update's states name it). */
  id?: string;
  command: string;
  params?: unknown;
  device?: string;
  group?: string;
  timeoutMs: number;
  validityMs: number;
  /** Every reply as it arrives (accepted, executing, succeeded, failed), with what ctl makes of it. */
  onReply?: (reply: ReplyBody, verdict: Verdict) => void;
  /** For a group: stop waiting once this many devices gave a final reply. */
  expect?: number;
  /** Sends the request unsigned (only devices with commands.allowUnsigned run it). */
  unsigned?: boolean;
}

export interface CallResult {
  request: CommandRequest;
  /** The sha256 of the request's payload as sent: what a reply names in `request`. */
  digest: string;
  /** The verified final reply of each device that answered, in arrival order. */
  finals: ReplyBody[];
  /** Answers that do not count (unpinned, unsigned, forged), in arrival order; duplicates left out. */
  refused: { reply: ReplyBody; verdict: Refusal }[];
  timedOut: boolean;
}

/** The shape of a reply, checked before anything reads it (zod's default strips nothing it does not name). */
const replySchema = z.looseObject({
  id: z.string(),
  device: z.string(),
  command: z.string(),
  state: z.string(),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
});

/** What a caller that checks nothing makes of every answer: a test's or a library user's choice, never ctl's. */
export const UNCHECKED = null;

type Waiting = (reply: ReplyBody, topic: string, text: string) => void;

/**
 * Signs and publishes requests and collects their replies: on an MQTT 5 response topic of its own under the
 * device's `P/D/reply/` (a device publishes only under its own topics), and on the devices'
 * `P/D/cmd/<name>/reply` topics (replies come there under 3.1.1, through a 3.1.1 bridge, and from every member
 * of a group: one request cannot name a response topic inside each member's namespace). With a
 * `trust`, only replies the device's pinned key signed for this request count (answer-trust.ts); `UNCHECKED`
 * counts every reply by its id, as before device keys.
 */
export class DeviceCaller {
  private readonly client: MqttClient;
  private readonly prefix: string;
  private readonly signer: Signer | undefined;
  private readonly trust: AnswerTrust | null;
  /** This caller's part of a response topic: `P/D/reply/<client>`. */
  private readonly caller: string;
  private readonly subscribed = new Set<string>();
  private readonly waiting = new Map<string, Waiting>();
  private readonly form: CommandForm;
  private dots: Promise<Dots> | undefined;

  constructor(
    client: MqttClient,
    prefix: string,
    signer: Signer | undefined,
    trust: AnswerTrust | null,
    form: CommandForm = "auto",
  ) {
    this.client = client;
    this.prefix = prefix;
    this.signer = signer;
    this.trust = trust;
    this.form = form;
    this.caller = `ctl-${randomBytes(8).toString("hex")}`;
    client.on("message", (topic, payload) => {
      const text = payload.toString("utf8");
      const device = topic.startsWith(`${prefix}/`) ? topic.slice(prefix.length + 1, -"/status".length) : "";
      if (topic.endsWith("/status") && device !== "" && !device.includes("/")) {
        this.trust?.sawStatus(device, topic, text);
        return;
      }
      // Anyone on the broker can publish here: only a reply's shape is read, and nothing else is.
      let parsed: ReturnType<typeof replySchema.safeParse>;
      try {
        parsed = replySchema.safeParse(JSON.parse(text));
      } catch {
        return;
      }
      if (!parsed.success) return;
      const body = parsed.data as ReplyBody & { id: string };
      try {
        this.waiting.get(body.id)?.(body, topic, text);
      } catch {
        // A caller's handler that fails on one reply must not take the connection's handler down with it.
      }
    });
  }

  private async listen(topics: string[]): Promise<void> {
    const fresh = topics.filter((t) => !this.subscribed.has(t));
    if (fresh.length === 0) return;
    await this.client.subscribeAsync(fresh, { qos: 1 });
    for (const t of fresh) this.subscribed.add(t);
  }

  /**
   * The command name's form in topics. `auto` asks the broker once per connection: where `.` becomes a level
   * separator (RabbitMQ), the flat form, and a device id or group with a dot is refused with the reason,
   * since its topics cannot be told apart there.
   */
  private async wire(o: CallOptions): Promise<CommandWire> {
    if (this.form !== "auto") return this.form;
    // A probe that failed (the connection went with it) is "unknown": the dotted form, as before the probe.
    this.dots ??= probeDots(this.client, this.prefix).catch((): Dots => "unknown");
    if ((await this.dots) !== "split") return "dotted";
    const name = o.device ?? o.group ?? "";
    if (name.includes(".")) throw splitDotsError(`${o.device === undefined ? "group" : "device"} ${name}`, true);
    return "flat";
  }

  async call(o: CallOptions): Promise<CallResult> {
    const wire = await this.wire(o);
    const topicName = wireName(o.command, wire);
    const request = newRequest({
      ...(o.id === undefined ? {} : { id: o.id }),
      command: o.command,
      params: o.params,
      device: o.device,
      group: o.group,
      now: Date.now(),
      validityMs: o.validityMs,
    });
    const target = o.device ?? "+";
    const v5 = this.client.options.protocolVersion === 5;
    const responseTopic =
      o.device !== undefined && v5 ? deviceReplyTopic(this.prefix, o.device, this.caller) : undefined;
    // Statuses first: their retained copies arrive before any reply, with the keys and versions trust reads.
    await this.listen([
      ...(this.trust ? [this.trust.statusTopic(target)] : []),
      ...(responseTopic ? [responseTopic] : []),
      deviceTopics(this.prefix, target).commandReply(topicName),
    ]);
    const published =
      o.group === undefined
        ? deviceTopics(this.prefix, target).command(topicName)
        : `${groupCommandPrefix(this.prefix, o.group)}${topicName}`;
    let payload: string;
    if (o.unsigned) {
      payload = JSON.stringify({ id: request.id, ...(o.params === undefined ? {} : { params: o.params }) });
    } else {
      if (!this.signer) throw new OutpostError("KEY_MISSING", "a signing key is needed (--key FILE)");
      payload = JSON.stringify(signPayload(JSON.stringify(request), this.signer.privateKey, this.signer.publicText));
    }

    const digest = requestDigest(payload);
    const finals = new Map<string, ReplyBody>();
    const refused: CallResult["refused"] = [];
    let timedOut = false;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        timedOut = true;
        done();
      }, o.timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.waiting.delete(request.id);
        resolve();
      };
      this.waiting.set(request.id, (reply, topic, text) => {
        if (o.device !== undefined && reply.device !== o.device) return;
        const verdict: Verdict = this.trust
          ? this.trust.check(reply.device, topic, text, reply as unknown as Record<string, unknown>, {
              id: request.id,
              request: digest,
              requestTopic: published,
              command: o.command,
            })
          : { trust: "verified" };
        if (verdict.trust === "duplicate" || verdict.trust === "other") return;
        o.onReply?.(reply, verdict);
        const final = FINAL_STATES.has(reply.state);
        if (isRefusal(verdict)) {
          refused.push({ reply, verdict });
          // A device nobody pinned will not become verifiable: its first final answer ends the call. Not so
          // for a pinned device: an unsigned or forged answer is not its own, which may still come.
          const unpinned = this.trust?.pinOf(reply.device) === undefined;
          if (final && o.group === undefined && unpinned && verdict.trust !== "forged") done();
          return;
        }
        if (!final || finals.has(reply.device)) return;
        finals.set(reply.device, reply);
        if (o.group === undefined || (o.expect !== undefined && finals.size >= o.expect)) done();
      });
      this.client
        .publishAsync(published, payload, {
          qos: 1,
          ...(responseTopic ? { properties: { responseTopic, correlationData: Buffer.from(request.id) } } : {}),
        })
        .catch((err: unknown) => {
          clearTimeout(timer);
          this.waiting.delete(request.id);
          reject(err);
        });
    });
    return { request, digest, finals: [...finals.values()], refused, timedOut };
  }
}
