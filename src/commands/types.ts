import type { IPublishPacket } from "mqtt";
import type { z } from "zod";
import type { Clock } from "../core/clock.ts";
import type { Logger } from "../core/logger.ts";
import type { ReplyBody } from "./envelope.ts";
import type { ReplayGuard } from "./replay.ts";

/** What the command handler needs from the MQTT link. */
export interface CommandSource {
  subscribe(topic: string): void;
  on(event: "message", listener: (topic: string, payload: Buffer, packet: IPublishPacket) => void): unknown;
  off(event: "message", listener: (topic: string, payload: Buffer, packet: IPublishPacket) => void): unknown;
}

export interface Reply {
  topic: string;
  body: ReplyBody;
  properties?: { correlationData?: Buffer };
}

export interface TrustedKey {
  name: string;
  key: string;
  allow: readonly string[];
}

/** The part of the configuration the handler reads for every request; it may change between two requests. */
export interface CommandPolicy {
  trustedKeys: readonly TrustedKey[];
  allowUnsigned: boolean;
  /** How far a request's issuedAt may lie in the future, and its expiresAt in the past. */
  skewMs: number;
  /** The longest expiresAt - issuedAt accepted; it bounds how long ids and nonces are remembered. */
  maxValidityMs: number;
}

/** Who sent a request: the trusted key that signed it (absent for an unsigned request). */
export interface Caller {
  key: string;
  allow: readonly string[];
}

/** Where the final reply to a request goes, for a later process to send it (restart, update). */
export interface PendingReply {
  id: string;
  command: string;
  topic: string;
  /** Base64 of the MQTT 5 correlation data, if the request had any. */
  correlationData?: string;
  /** The sha256 of the request's payload (absent in a record kept by an agent before signed answers). */
  request?: string;
  /** The topic the request arrived on (absent in a record kept by an agent before it was named). */
  requestTopic?: string;
}

export interface RunContext {
  /** The request's id (for logs and messages). */
  id: string;
  /** Publishes an `executing` reply with this progress. */
  progress(progress: unknown): void;
  signal: AbortSignal;
  caller?: Caller;
  /** The final reply will not come from this run: returns where it must go, for whoever sends it later. */
  defer(): PendingReply;
}

/** A command's params checked: a run bound to the parsed value, or the BAD_PARAMS message. */
export type BoundCommand = { ok: true; run(context: RunContext): unknown } | { ok: false; message: string };

/**
 * A command as the router holds it. Built by `defineCommand`, which ties the params' schema to the run's
 * parameter type: the router checks the params once, and no command casts them again.
 */
export interface CommandDefinition {
  name: string;
  /**
   * False for a command that only reads: it may run while replay records cannot be stored. Anything else is
   * refused then (fail closed), so the default is true.
   */
  changesState?: boolean;
  /** The largest request (the whole MQTT payload) accepted for this command; DEFAULT_MAX_REQUEST otherwise. */
  maxRequestBytes?: number;
  /** Checks raw params against the command's schema. */
  bind(params: unknown): BoundCommand;
}

export interface CommandSpec<S extends z.ZodType> {
  name: string;
  params: S;
  changesState?: boolean;
  maxRequestBytes?: number;
  /** Runs with the params parsed by `params`; the value returned is the result. */
  run(params: z.output<S>, context: RunContext): unknown;
}

/** What the command router is built with (commands.ts). */
export interface CommandsOptions {
  source: CommandSource;
  topicPrefix: string;
  deviceId: string;
  groups: readonly string[];
  reply: (reply: Reply) => void;
  policy: () => CommandPolicy;
  /** Commands known from the start; modules add theirs with `register`. */
  definitions?: readonly CommandDefinition[];
  replay: ReplayGuard;
  clock: Clock;
  logger: Logger;
  /** Commands running at once (default 4) ... */
  maxConcurrent?: number;
  /** ... and accepted ones waiting for a slot (default 64); BUSY only beyond both. */
  maxQueued?: number;
}
