import { randomBytes } from "node:crypto";
import type { Socket } from "node:net";
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import { type CommandRequest, FINAL_STATES, newRequest, type ReplyBody, signPayload } from "../commands/envelope.ts";
import { OutpostError } from "../core/errors.ts";
import { type BrokerEndpoint, endpointOptions, refusedMqtt5 } from "../mqtt/options.ts";
import { ctlReplyTopic, deviceTopics, groupCommandPrefix } from "../mqtt/topics.ts";

export interface BrokerOptions extends BrokerEndpoint {
  protocolVersion?: 4 | 5;
}

/** One operator connection: MQTT 5 if the broker speaks it, otherwise 3.1.1 (the demo's aedes). */
export async function connectBroker(o: BrokerOptions): Promise<MqttClient> {
  const base: IClientOptions = {
    ...endpointOptions(o),
    clientId: `outpost-ctl-${randomBytes(6).toString("hex")}`,
    clean: true,
    reconnectPeriod: 0,
  };
  let client: MqttClient;
  try {
    client = await mqtt.connectAsync({ ...base, protocolVersion: o.protocolVersion ?? 5 });
  } catch (err) {
    if (!(o.protocolVersion === undefined && refusedMqtt5(5, err))) throw err;
    client = await mqtt.connectAsync({ ...base, protocolVersion: 4 });
  }
  // MQTT.js leaves Nagle on: every request/reply would wait about 40 ms for a delayed ACK.
  (client.stream as Partial<Socket> | undefined)?.setNoDelay?.(true);
  return client;
}

export interface Signer {
  privateKey: import("node:crypto").KeyObject;
  publicText: string;
}

export interface CallOptions {
  command: string;
  params?: unknown;
  device?: string;
  group?: string;
  timeoutMs: number;
  validityMs: number;
  /** Every reply as it arrives: accepted, executing, succeeded, failed. */
  onReply?: (reply: ReplyBody) => void;
  /** For a group: stop waiting once this many devices gave a final reply. */
  expect?: number;
  /** Sends the request unsigned (only devices with commands.allowUnsigned run it). */
  unsigned?: boolean;
}

export interface CallResult {
  request: CommandRequest;
  /** The final reply of each device that answered, in arrival order. */
  finals: ReplyBody[];
  timedOut: boolean;
}

/**
 * Signs and publishes requests and collects their replies, on an MQTT 5 response topic of its own and on the
 * devices' `P/D/cmd/<name>/reply` topics (replies come there under 3.1.1, or through a 3.1.1 bridge).
 */
export class Caller {
  private readonly client: MqttClient;
  private readonly prefix: string;
  private readonly signer: Signer | undefined;
  private readonly responseTopic: string;
  private readonly subscribed = new Set<string>();
  private readonly waiting = new Map<string, (reply: ReplyBody) => void>();

  constructor(client: MqttClient, prefix: string, signer?: Signer) {
    this.client = client;
    this.prefix = prefix;
    this.signer = signer;
    this.responseTopic = ctlReplyTopic(prefix, randomBytes(8).toString("hex"));
    client.on("message", (_topic, payload) => {
      let body: ReplyBody;
      try {
        body = JSON.parse(payload.toString("utf8")) as ReplyBody;
      } catch {
        return;
      }
      if (typeof body?.id === "string") this.waiting.get(body.id)?.(body);
    });
  }

  private async listen(topics: string[]): Promise<void> {
    const fresh = topics.filter((t) => !this.subscribed.has(t));
    if (fresh.length === 0) return;
    await this.client.subscribeAsync(fresh, { qos: 1 });
    for (const t of fresh) this.subscribed.add(t);
  }

  async call(o: CallOptions): Promise<CallResult> {
    const request = newRequest({
      command: o.command,
      params: o.params,
      device: o.device,
      group: o.group,
      now: Date.now(),
      validityMs: o.validityMs,
    });
    const target = o.device ?? "+";
    await this.listen([this.responseTopic, deviceTopics(this.prefix, target).commandReply(o.command)]);
    const topic =
      o.group === undefined
        ? deviceTopics(this.prefix, target).command(o.command)
        : `${groupCommandPrefix(this.prefix, o.group)}${o.command}`;
    let payload: string;
    if (o.unsigned) {
      payload = JSON.stringify({ id: request.id, ...(o.params === undefined ? {} : { params: o.params }) });
    } else {
      if (!this.signer) throw new OutpostError("KEY_MISSING", "a signing key is needed (--key FILE)");
      payload = JSON.stringify(signPayload(JSON.stringify(request), this.signer.privateKey, this.signer.publicText));
    }

    const finals = new Map<string, ReplyBody>();
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
      this.waiting.set(request.id, (reply) => {
        if (o.device !== undefined && reply.device !== o.device) return;
        o.onReply?.(reply);
        if (!FINAL_STATES.has(reply.state) || finals.has(reply.device)) return;
        finals.set(reply.device, reply);
        if (o.group === undefined || (o.expect !== undefined && finals.size >= o.expect)) done();
      });
      this.client
        .publishAsync(topic, payload, {
          qos: 1,
          ...(this.client.options.protocolVersion === 5
            ? { properties: { responseTopic: this.responseTopic, correlationData: Buffer.from(request.id) } }
            : {}),
        })
        .catch((err: unknown) => {
          clearTimeout(timer);
          this.waiting.delete(request.id);
          reject(err);
        });
    });
    return { request, finals: [...finals.values()], timedOut };
  }
}
