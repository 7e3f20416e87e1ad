// What `ctl` believes of a device's answer: only what the device's pinned key signed, for the request ctl sent,
// in order. Everything else is shown for what it is and never counts (docs/security.md, "Device identity").
import type { KeyObject } from "node:crypto";
import { checkAnswer, hasSignature } from "../commands/answers.ts";
import { fingerprintOf, parsePublicKey, publicKeyText } from "../commands/keys.ts";
import { errorMessage } from "../core/errors.ts";
import { brokerId, brokerIds, type KnownDevices, type Pin } from "./known-devices.ts";

export type Verdict =
  /** Signed by the device's pinned key, for this request, in order: the only answer that counts. */
  | { trust: "verified" }
  /** A copy of an answer already taken (a QoS 1 resend, a retained value republished at a reconnect). */
  | { trust: "duplicate" }
  /**
   * Signed by the device, but about another request (an update state an agent republishes at its start) or
   * from a session the device has left: not this run's business, neither counted nor refused.
   */
  | { trust: "other" }
  /** No pin for the device, or no signature (an agent older than signed answers): shown, never counted. */
  | { trust: "unpinned" | "unsigned"; why: string }
  /** A signature that does not verify, a changed key, an answer to another request, a seq gone backwards. */
  | { trust: "forged"; why: string };

/** An answer that does not count and says why: shown, and its exit code earned (ctl-trust.ts trustCode). */
export type Refusal = Extract<Verdict, { why: string }>;

export function isRefusal(v: Verdict): v is Refusal {
  return "why" in v;
}

/** What a reply or an update state must name to answer this request. */
export interface Expected {
  /** The request's id. */
  id?: string;
  /** The sha256 of the request's exact payload (commands/answers.ts requestDigest). */
  request?: string;
  /** The topic the request was published on: a reply names where the request it answers arrived. */
  requestTopic?: string;
  /** The command asked for. */
  command?: string;
}

export interface TrustOptions {
  pins: KnownDevices;
  /** The broker's URL: pins are per broker (known-devices.ts brokerId). */
  broker: string;
  /** The other brokers of the list (the nodes of one cluster): a pin made through any of them counts. */
  failover?: readonly string[];
  prefix: string;
  /** Pin an unpinned device's key from its signed status (ssh's accept-new): never a changed key. */
  acceptNew: boolean;
  /** Told of each pin `acceptNew` adds (already saved). */
  onPinned?: (pin: Pin) => void;
}

interface Stream {
  session: string;
  seq: number;
  seen: Set<number>;
  /** Sessions this stream moved on from: their messages are old news, whatever their seq. */
  left: Set<string>;
}

interface StatusSeen {
  topic: string;
  text: string;
  body: Record<string, unknown>;
}

export class AnswerTrust {
  private readonly o: TrustOptions;
  private readonly broker: string;
  private readonly brokers: string[];
  private readonly statuses = new Map<string, StatusSeen>();
  private readonly streams = new Map<string, Stream>();
  private readonly keys = new Map<string, KeyObject>();

  constructor(o: TrustOptions) {
    this.o = o;
    this.broker = brokerId(o.broker);
    this.brokers = brokerIds(o.broker, o.failover);
  }

  /** The status topics this needs to see for `device` (`+`: any): keys to accept, versions to name. */
  statusTopic(device: string): string {
    return `${this.o.prefix}/${device}/status`;
  }

  /** Keeps a device's latest retained status: where a key to accept, a changed key or a version is read. */
  sawStatus(device: string, topic: string, text: string): void {
    if (text === "") return;
    try {
      const body = JSON.parse(text) as unknown;
      if (body !== null && typeof body === "object" && !Array.isArray(body)) {
        this.statuses.set(device, { topic, text, body: body as Record<string, unknown> });
      }
    } catch {
      // Not a status of ours.
    }
  }

  /** The devices whose status was seen. */
  statusDevices(): string[] {
    return [...this.statuses.keys()];
  }

  pinOf(device: string): Pin | undefined {
    return this.o.pins.find(this.brokers, this.o.prefix, device);
  }

  /** The device's status as last seen, checked like an answer (its `lost` will is never signed). */
  status(device: string): { body: Record<string, unknown>; verdict: Verdict } | undefined {
    const s = this.statuses.get(device);
    if (!s) return undefined;
    return { body: s.body, verdict: this.check(device, s.topic, s.text, s.body, {}, false) };
  }

  /**
   * Checks one answer: `text` exactly as received on `topic`, `body` its parsed form. A verified answer must
   * also name what `expected` names, and its seq must not go backwards within its session on this topic.
   */
  check(
    device: string,
    topic: string,
    text: string,
    body: Record<string, unknown>,
    expected: Expected,
    ordered = true,
  ): Verdict {
    // No signature at all: an agent older than signed answers (or anyone): said so, pinned or not.
    if (!hasSignature(text)) {
      // The version the device runs, from its status (an update state's `version` is the release's).
      const version = this.versionOf(device) ?? (typeof body.version === "string" ? body.version : undefined);
      const running = version ? ` (version ${printable(version, 40)})` : "";
      return { trust: "unsigned", why: `unsigned${running}: an agent before signed answers, or not the device` };
    }
    const key = this.keyOf(device, topic, text);
    if ("trust" in key) return key;
    const signed = checkAnswer(key.key, device, topic, text);
    if (signed.state !== "verified") return { trust: "forged", why: this.invalidWhy(device, key.pin) };
    // The device's own word about another request (its last update outcome, republished at each start).
    if (expected.id !== undefined && body.id !== expected.id) return { trust: "other" };
    if (expected.request !== undefined && body.request !== expected.request) {
      return { trust: "forged", why: "signed, but answers another request (a replayed answer)" };
    }
    // A copy of this request published elsewhere (another device's, another command's topic, or again after
    // it expired there): the device's genuine refusal of the copy is not its answer to this request.
    if (expected.requestTopic !== undefined && body.requestTopic !== expected.requestTopic) {
      return {
        trust: "forged",
        why: `answers a copy of this request published on ${printable(String(body.requestTopic))}: someone replayed it`,
      };
    }
    if (expected.command !== undefined && body.command !== expected.command) {
      return { trust: "forged", why: `answers ${printable(String(body.command))}, not ${expected.command}` };
    }
    return ordered ? this.inOrder(device, topic, body) : { trust: "verified" };
  }

  private keyOf(device: string, topic: string, text: string): { key: KeyObject; pin: Pin } | Verdict {
    let pin = this.pinOf(device);
    if (!pin) {
      const offered = this.offered(device);
      if (this.o.acceptNew && offered) {
        const { key } = offered;
        // Accepted only when the status and this answer are both signed by the key the status offers.
        if (offered.signsStatus && checkAnswer(key, device, topic, text).state === "verified") {
          pin = {
            broker: this.broker,
            prefix: this.o.prefix,
            device,
            key: publicKeyText(key),
            note: `accepted new ${new Date().toISOString()}`,
          };
          try {
            this.o.pins.pin(pin);
            this.o.pins.save();
          } catch (err) {
            this.o.pins.forget(pin.broker, pin.prefix, device);
            return { trust: "unpinned", why: `${device}'s key could not be pinned: ${errorMessage(err)}` };
          }
          this.o.onPinned?.(pin);
        }
      }
      if (!pin) {
        const fp = offered?.fingerprint;
        const hint = fp
          ? `; its status offers ${fp}: compare it with what install printed on the device, then outpost ctl trust ${device} ${fp}`
          : "";
        return { trust: "unpinned", why: `${device} is not pinned in ${this.o.pins.where}${hint}` };
      }
    }
    const key = this.parse(pin.key);
    if (!key) return { trust: "forged", why: `the pin of ${device} in ${this.o.pins.where} is not a key` };
    return { key, pin };
  }

  private parse(text: string): KeyObject | undefined {
    let key = this.keys.get(text);
    if (!key) {
      try {
        key = parsePublicKey(text);
      } catch {
        return undefined;
      }
      this.keys.set(text, key);
    }
    return key;
  }

  /** The key the device's last status offers (the form it came in), and whether that status is signed by it. */
  private offered(device: string) {
    const status = this.statuses.get(device);
    const text = status?.body.deviceKey;
    const key = typeof text === "string" ? this.parse(text) : undefined;
    const fingerprint = typeof text === "string" ? safeFingerprint(text) : undefined;
    if (!status || typeof text !== "string" || !key || !fingerprint) return undefined;
    const signsStatus = checkAnswer(key, device, status.topic, status.text).state === "verified";
    return { text, key, fingerprint, signsStatus };
  }

  private versionOf(device: string): string | undefined {
    const v = this.statuses.get(device)?.body.version;
    return typeof v === "string" ? v : undefined;
  }

  /** Why a signature failed: a device whose signed status names another key was re-installed, or is impersonated. */
  private invalidWhy(device: string, pin: Pin): string {
    const pinned = safeFingerprint(pin.key) ?? "?";
    const offered = this.offered(device);
    if (offered && offered.text !== pin.key && offered.signsStatus) {
      return (
        `THE KEY OF ${device} HAS CHANGED: pinned ${pinned}, its status now offers ${offered.fingerprint}. ` +
        `If ${device} was re-installed, run outpost ctl forget ${device} and pin the new key; otherwise another ` +
        `client is answering as ${device}`
      );
    }
    return `the signature does not verify with ${device}'s pinned key ${pinned}: forged or altered`;
  }

  /** Refuses a seq that goes backwards within a session on one topic; a repeated seq is a duplicate. */
  private inOrder(device: string, topic: string, body: Record<string, unknown>): Verdict {
    const { session, seq } = body;
    if (typeof session !== "string" || typeof seq !== "number") return { trust: "verified" };
    const id = `${device}\n${topic}`;
    const s = this.streams.get(id);
    if (s?.left.has(session)) return { trust: "other" };
    if (!s || s.session !== session) {
      const left = new Set(s ? [...s.left, s.session] : []);
      this.streams.set(id, { session, seq, seen: new Set([seq]), left });
      return { trust: "verified" };
    }
    if (s.seen.has(seq)) return { trust: "duplicate" };
    if (seq < s.seq) {
      return { trust: "forged", why: `seq ${seq} after ${s.seq} in session ${session}: an old answer replayed` };
    }
    s.seq = seq;
    s.seen.add(seq);
    return { trust: "verified" };
  }
}

/** A device's text as ctl prints it: no control characters (a forged line break, a terminal escape). */
export function printable(text: string, max = 200): string {
  // Bidirectional overrides and isolates too: they make a line read otherwise than its characters go.
  // biome-ignore lint/suspicious/noControlCharactersInRegex: the control characters are what is removed
  return text.replace(/[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g, "?").slice(0, max);
}

function safeFingerprint(key: string): string | undefined {
  try {
    parsePublicKey(key);
    return fingerprintOf(key);
  } catch {
    return undefined;
  }
}
