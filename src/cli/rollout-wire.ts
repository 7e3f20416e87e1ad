// What a rollout's driver sends and reads on the wire (rollout-driver.ts): its timings, the request it signs, and
// the shapes of the answers it reads (anyone can publish on those topics: only these shapes are read).

import type { MqttClient } from "mqtt";
import { z } from "zod";
import { newRequest, signPayload } from "../commands/envelope.ts";
import type { AnswerTrust } from "./answer-trust.ts";
import type { Signer } from "./ctl-client.ts";
import type { RolloutJournal } from "./rollout-journal.ts";

/** How long a request may go unanswered (not even `accepted`) before it is sent again with a fresh id. */
export const ACK_MS = 20_000;
/** How long a request is valid: a device offline longer gets a freshly signed one when it returns. */
export const VALIDITY_MS = 60_000;
/** A lease outlives its driver's last renewal by this much (another machine may take it after). */
export const LEASE_MS = 15_000;
/**
 * Before its first turn a driver reads the devices' retained statuses and update states: what they said while
 * no driver ran is reconciled before anything times out or pauses.
 */
export const SETTLE_MS = 3000;
/** A device asked again after a retry code waits 5 s, doubling with each attempt, up to 5 minutes. */
export const backoff = (attempt: number) => Math.min(5000 * 2 ** Math.max(0, attempt - 1), 300_000);

/** Codes after which nothing was installed: the device is asked again (within its deadline). */
export const RETRY = new Set(["OTA_DOWNLOAD_FAILED", "COMMAND_EXPIRED", "OTA_BUSY", "TASK_ABORTED"]);

export const stateSchema = z.looseObject({
  id: z.string().optional(),
  state: z.string(),
  code: z.string().optional(),
  reason: z.string().optional(),
});
export const replySchema = z.looseObject({
  id: z.string(),
  device: z.string(),
  state: z.string(),
  result: z
    .looseObject({ state: z.string().optional(), request: z.string().optional(), last: stateSchema.optional() })
    .optional(),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
});

/** A signed `update` request of the rollout for one device: its id is derived (rollout-journal.ts requestIdOf). */
export function signedRequest(id: string, device: string, params: unknown, now: number, signer: Signer): string {
  const request = newRequest({ id, command: "update", params, device, now, validityMs: VALIDITY_MS });
  return JSON.stringify(signPayload(JSON.stringify(request), signer.privateKey, signer.publicText));
}

export interface DriverEvent {
  kind: "wave" | "device" | "state" | "refused" | "waiting";
  device?: string;
  text: string;
}

export interface DriverOptions {
  journal: RolloutJournal;
  id: string;
  client: MqttClient;
  trust: AnswerTrust;
  signer: Signer;
  /** The lease's holder: this process. */
  me: { holder: string; pid: number; machine: string };
  alive: (pid: number) => boolean;
  now?: () => number;
  tickMs?: number;
  ackMs?: number;
  signal: AbortSignal;
  onEvent: (e: DriverEvent) => void;
}

export class LeaseRefused extends Error {}
