import { SIGNATURE_BYTES } from "../commands/answers.ts";
import type { Entry, ReplyProperties } from "./types.ts";

/** The size of the PUBLISH packet as the broker counts it (MQTT 5, packet id, property length). */
export function packetSize(entry: Entry): number {
  // entry.bytes is topic + payload; 18 is room for the replayed flag, SIGNATURE_BYTES for the device's signature.
  const props = entry.props ? Buffer.byteLength(entry.props) : 0;
  const remaining = 2 + 2 + 1 + props + entry.bytes + 18 + SIGNATURE_BYTES;
  const lengthBytes = remaining < 128 ? 1 : remaining < 16_384 ? 2 : remaining < 2_097_152 ? 3 : 4;
  return 1 + lengthBytes + remaining;
}

export function encodeProps(p: ReplyProperties): string {
  return JSON.stringify({ responseTopic: p.responseTopic, correlationData: p.correlationData?.toString("base64") });
}

export function decodeProps(text: string): ReplyProperties {
  const raw = JSON.parse(text) as { responseTopic?: string; correlationData?: string };
  return {
    ...(raw.responseTopic ? { responseTopic: raw.responseTopic } : {}),
    ...(raw.correlationData ? { correlationData: Buffer.from(raw.correlationData, "base64") } : {}),
  };
}

/** MQTT 5 reason codes in a PUBACK that may clear up by themselves; any other refusal is final. */
const TRANSIENT_REFUSALS = new Set([0x97 /* quota exceeded */, 0x89 /* server busy */]);

/** The reason code of a final refusal by the broker (the message can never be sent), if it is one. */
export function finalRefusal(err: unknown): number | undefined {
  const code = (err as { code?: unknown }).code;
  return typeof code === "number" && code >= 0x80 && !TRANSIENT_REFUSALS.has(code) ? code : undefined;
}
