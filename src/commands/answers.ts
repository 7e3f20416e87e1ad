import { createHash, type KeyObject, sign, verify } from "node:crypto";

/**
 * What a device's signature covers, before the device id, the topic and the payload: a context of its own, so
 * that a device's answer can never pass for an operator's request (`outpost-command-v1`) or a release
 * (`outpost-release-v1`), nor the reverse.
 */
export const ANSWER_CONTEXT = "outpost-device-answer-v1\n";

/** The signature rides at the end of the payload's own JSON object, so MQTT 3.1.1 and bridges keep it. */
const SIGNED_TAIL = /(,?)"sig":"([A-Za-z0-9+/]{86}==)"\}$/;
/** What the signature adds to a payload: `,"sig":"` and 88 characters of base64 and `"`. */
export const SIGNATURE_BYTES = 97;

/** The device id and the topic as a JSON array (no separator inside them can shift bytes between the fields). */
function signedBytes(deviceId: string, topic: string, payload: string): Buffer {
  return Buffer.from(`${ANSWER_CONTEXT}${JSON.stringify([deviceId, topic])}\n${payload}`, "utf8");
}

/**
 * The payload (a JSON object's text) with the device's signature appended as its last field, `"sig"`: ed25519
 * over the context, the device id, the full topic and the exact payload before the field was added.
 */
export function signAnswer(key: KeyObject, deviceId: string, topic: string, payload: string): string {
  if (!payload.startsWith("{") || !payload.endsWith("}")) throw new Error("only a JSON object's text is signed");
  const sig = sign(null, signedBytes(deviceId, topic, payload), key).toString("base64");
  return `${payload.slice(0, -1)}${payload === "{}" ? "" : ","}"sig":"${sig}"}`;
}

export type AnswerCheck =
  /** Signed by the key. */
  | { state: "verified" }
  /** No signature at all (an agent from before signed answers, or the last will). */
  | { state: "unsigned" }
  /** Signed, but not by this key for this device and topic, or the bytes changed: never counts. */
  | { state: "invalid" };

/** Whether a payload carries a device's signature at all (valid or not: checkAnswer says). */
export function hasSignature(payload: string): boolean {
  return SIGNED_TAIL.test(payload);
}

/** Checks a payload as received on `topic` against the device's pinned key. */
export function checkAnswer(key: KeyObject, deviceId: string, topic: string, payload: string): AnswerCheck {
  const m = SIGNED_TAIL.exec(payload);
  if (!m) return { state: "unsigned" };
  // The field follows a comma, or opens an object that holds nothing else.
  if (m[1] === "" && m.index !== 1) return { state: "invalid" };
  const signed = `${payload.slice(0, m.index)}}`;
  const ok = verify(null, signedBytes(deviceId, topic, signed), key, Buffer.from(m[2] ?? "", "base64"));
  return ok ? { state: "verified" } : { state: "invalid" };
}

/** The sha256 (hex) of a request's exact payload: what a reply names to say which request it answers. */
export function requestDigest(payload: Buffer | string): string {
  return createHash("sha256").update(payload).digest("hex");
}
