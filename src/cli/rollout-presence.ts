import type { MqttClient } from "mqtt";
import { requestDigest } from "../commands/answers.ts";
import { newRequest, signPayload } from "../commands/envelope.ts";
import { deviceTopics } from "../mqtt/topics.ts";
import { type AnswerTrust, isRefusal } from "./answer-trust.ts";
import type { Signer } from "./ctl-client.ts";
import { VALIDITY_MS } from "./rollout-wire.ts";

/**
 * How soon a device that has not been seen is asked again: 30 s, doubled after each unanswered ask up to 5 min,
 * so that a thousand devices switched off for the night cost the broker a few describes a second, not 33.
 */
export const PRESENCE_EVERY_MS = 30_000;
export const PRESENCE_MAX_MS = 300_000;

/**
 * Presence and arch for the rollout driver where retained statuses do not reach it: a RabbitMQ cluster keeps a
 * status on the node it was published to, for exact subscriptions only, so a device on another node is never
 * "online" to the driver. A pending device not seen online is sent a signed `describe` (it changes nothing) now
 * and then; an answer its pinned key signed, to that very request, says it is there and which arch it runs.
 */
export class PresenceProbe {
  private readonly o: {
    client: MqttClient;
    prefix: string;
    trust: AnswerTrust;
    signer: Signer;
    onSeen: (device: string) => void;
  };
  private readonly asked = new Map<string, { at: number; id: string; digest: string; tries: number }>();
  private readonly arches = new Map<string, string>();
  private readonly answered = new Set<string>();

  constructor(o: PresenceProbe["o"]) {
    this.o = o;
  }

  /** The topic its answers come on (the fallback reply topic of `describe`): subscribed with the driver's. */
  get replies(): string {
    return deviceTopics(this.o.prefix, "+").commandReply("describe");
  }

  /**
   * Whether a describe went to the device and its answer may still come (within `answerMs`): a device the
   * driver cannot see yet is not taken for offline before it had the time to answer.
   */
  awaiting(device: string, now: number, answerMs: number): boolean {
    const last = this.asked.get(device);
    return last !== undefined && !this.answered.has(device) && now - last.at < answerMs;
  }

  /** The arch the device's signed answer named, if any. */
  arch(device: string): string | undefined {
    return this.arches.get(device);
  }

  ask(device: string, now: number): void {
    const last = this.asked.get(device);
    if (last && now - last.at < Math.min(PRESENCE_MAX_MS, PRESENCE_EVERY_MS * 2 ** (last.tries - 1))) return;
    const request = newRequest({ command: "describe", device, now, validityMs: VALIDITY_MS });
    const payload = JSON.stringify(
      signPayload(JSON.stringify(request), this.o.signer.privateKey, this.o.signer.publicText),
    );
    const tries = this.answered.has(device) ? 1 : (last?.tries ?? 0) + 1;
    this.answered.delete(device);
    this.asked.set(device, { at: now, id: request.id, digest: requestDigest(payload), tries });
    this.o.client.publish(deviceTopics(this.o.prefix, device).command("describe"), payload, { qos: 1 });
  }

  /** Takes a message on `P/D/cmd/describe/reply`; true when it was one (whatever came of it). */
  handle(device: string, what: string, topic: string, text: string): boolean {
    if (what !== "cmd/describe/reply") return false;
    const asked = this.asked.get(device);
    let body: Record<string, unknown>;
    try {
      body = JSON.parse(text) as Record<string, unknown>;
    } catch {
      return true;
    }
    if (!asked || body === null || typeof body !== "object" || body.id !== asked.id || body.state !== "succeeded")
      return true;
    const verdict = this.o.trust.check(device, topic, text, body, {
      id: asked.id,
      request: asked.digest,
      command: "describe",
      requestTopic: deviceTopics(this.o.prefix, device).command("describe"),
    });
    if (isRefusal(verdict) || verdict.trust !== "verified") return true;
    const arch = (body.result as { arch?: unknown } | undefined)?.arch;
    if (typeof arch === "string") this.arches.set(device, arch);
    this.answered.add(device);
    this.o.onSeen(device);
    return true;
  }
}
