import { type KeyObject, randomBytes, randomUUID, sign, verify } from "node:crypto";
import { z } from "zod";
import { GROUP_NAME } from "../core/patterns.ts";
import { EVERY_DEVICE } from "../mqtt/topics.ts";

/**
 * The wire format of a command request, shared by the device (verifying) and `outpost ctl` (signing).
 *
 * A signed request is `{"payload": "<request JSON text>", "key": "ed25519:<base64>", "sig": "<base64>"}`.
 * The signature is ed25519 over the bytes `SIGNING_CONTEXT` followed by the UTF-8 bytes of `payload`
 * exactly as carried: no re-serialisation, so any language can sign and verify without a canonical JSON.
 */
export const SIGNING_CONTEXT = "outpost-command-v1\n";

/** Command names: what follows `P/D/cmd/`. */
export const COMMAND_NAME = /^[a-z][a-z0-9.-]{0,63}$/;

/** What the operator signs. Exactly one of `device` and `group` says who must execute it. */
export const requestSchema = z
  .strictObject({
    id: z.string().min(1).max(128),
    command: z.string().regex(COMMAND_NAME, "expected a command name"),
    params: z.unknown().optional(),
    device: z.string().min(1).max(64).optional(),
    group: z
      .string()
      .refine((g) => GROUP_NAME.test(g) || g === EVERY_DEVICE, "expected a group name")
      .optional(),
    issuedAt: z.number().int().nonnegative(),
    expiresAt: z.number().int().nonnegative(),
    nonce: z.string().min(16).max(128),
  })
  .refine((r) => (r.device === undefined) !== (r.group === undefined), {
    message: "expected exactly one of device and group",
    path: ["device"],
  })
  .refine((r) => r.expiresAt >= r.issuedAt, {
    message: "expected expiresAt at or after issuedAt",
    path: ["expiresAt"],
  });

export type CommandRequest = z.output<typeof requestSchema>;

export const signedEnvelopeSchema = z.strictObject({
  // No cap of its own: the whole message was held to its command's maxRequestBytes before it was parsed.
  payload: z.string().min(2),
  key: z.string().min(1).max(512),
  sig: z.string().min(1).max(256),
});

export type SignedEnvelope = z.output<typeof signedEnvelopeSchema>;

/** An unsigned request (only with `commands.allowUnsigned`): the id, and params if any. */
export const unsignedSchema = z.strictObject({
  id: z.string().min(1).max(128),
  params: z.unknown().optional(),
});

export function signedBytes(payload: string): Buffer {
  return Buffer.concat([Buffer.from(SIGNING_CONTEXT, "utf8"), Buffer.from(payload, "utf8")]);
}

export function signPayload(payload: string, privateKey: KeyObject, publicText: string): SignedEnvelope {
  return { payload, key: publicText, sig: sign(null, signedBytes(payload), privateKey).toString("base64") };
}

export function verifyEnvelope(envelope: SignedEnvelope, publicKey: KeyObject): boolean {
  const sig = Buffer.from(envelope.sig, "base64");
  if (sig.length !== 64) return false;
  try {
    return verify(null, signedBytes(envelope.payload), publicKey, sig);
  } catch {
    return false;
  }
}

export interface NewRequest {
  command: string;
  params?: unknown;
  device?: string;
  group?: string;
  now: number;
  validityMs: number;
  id?: string;
}

export function newRequest(r: NewRequest): CommandRequest {
  return {
    id: r.id ?? randomUUID(),
    command: r.command,
    ...(r.params === undefined ? {} : { params: r.params }),
    ...(r.device === undefined ? {} : { device: r.device }),
    ...(r.group === undefined ? {} : { group: r.group }),
    issuedAt: r.now,
    expiresAt: r.now + r.validityMs,
    nonce: randomBytes(16).toString("hex"),
  };
}

/** The replies a device sends for one request: `accepted`, any `executing`, then `succeeded` or `failed`. */
export type ReplyState = "accepted" | "executing" | "succeeded" | "failed";
export const FINAL_STATES: ReadonlySet<string> = new Set(["succeeded", "failed"]);

export interface ReplyBody {
  id?: string;
  command: string;
  device: string;
  /** The sha256 of the request's exact payload: which request this answers. */
  request?: string;
  /**
   * The topic the request arrived on: a copy of a request published elsewhere (another device's command
   * topic, after it expired) is refused with an answer an operator does not take for its own request's.
   */
  requestTopic?: string;
  state: ReplyState;
  result?: unknown;
  progress?: unknown;
  error?: { code: string; message: string };
}
