import { EventEmitter } from "node:events";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { IPublishPacket } from "mqtt";
import { pino } from "pino";
import { z } from "zod";
import { type CommandDefinition, type CommandPolicy, Commands, type Reply } from "../../src/commands/commands.ts";
import { type CommandRequest, newRequest, type SignedEnvelope, signPayload } from "../../src/commands/envelope.ts";
import { generateKeys, parsePrivateKey } from "../../src/commands/keys.ts";
import { ReplayGuard } from "../../src/commands/replay.ts";
import { ManualClock } from "../../src/core/clock.ts";
import { OutpostError } from "../../src/core/errors.ts";

export const PREFIX = "outpost/v1";
export const DEVICE = "dev-1";
export const T0 = 1_800_000_000_000;

/** An operator key pair in the forms the tests need. */
export function operatorKey() {
  const keys = generateKeys();
  return { ...keys, privateKey: parsePrivateKey(keys.privatePem) };
}
export type OperatorKey = ReturnType<typeof operatorKey>;

export function request(overrides: Partial<CommandRequest> & { command: string }, now = T0): CommandRequest {
  return { ...newRequest({ device: DEVICE, now, validityMs: 60_000, ...overrides }), ...overrides };
}

export function sign(key: OperatorKey, req: CommandRequest): SignedEnvelope {
  return signPayload(JSON.stringify(req), key.privateKey, key.publicText);
}

/** Stands in for the MQTT link's message events, so that the handler runs without a broker. */
class Bus extends EventEmitter {
  readonly topics: string[] = [];
  subscribe(topic: string): void {
    this.topics.push(topic);
  }
}

/**
 * A command handler with a real replay store in a temp dir, a manual clock and two probe commands whose
 * effects are counted: what the tests assert on, besides the replies.
 */
export function harness(options: { policy?: Partial<CommandPolicy>; dir?: string; groups?: string[] } = {}) {
  const ops = operatorKey();
  const clock = new ManualClock(T0);
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), "outpost-cmd-"));
  const logger = pino({ level: "silent" });
  const bus = new Bus();
  const replies: Reply[] = [];
  const effects: unknown[] = [];
  const probe: CommandDefinition = {
    name: "probe",
    params: z.strictObject({ n: z.number().int() }).optional(),
    run: (params) => {
      effects.push(params);
      return { done: true };
    },
  };
  const slow: CommandDefinition = {
    name: "slow",
    params: z.undefined(),
    run: async (_params, context) => {
      context.progress({ step: 1 });
      effects.push("slow");
      return "finished";
    },
  };
  const boom: CommandDefinition = {
    name: "boom",
    params: z.undefined(),
    run: () => {
      throw new OutpostError("DISK_FULL", "no space left");
    },
  };
  const policy: CommandPolicy = {
    trustedKeys: [{ name: "ops", key: ops.publicText, allow: ["*"] }],
    allowUnsigned: false,
    skewMs: 30_000,
    maxValidityMs: 600_000,
    ...options.policy,
  };
  const replay = new ReplayGuard({ dir, logger, now: clock.now() });
  const commands = new Commands({
    source: bus,
    topicPrefix: PREFIX,
    deviceId: DEVICE,
    groups: options.groups ?? [],
    reply: (r) => replies.push(r),
    policy: () => policy,
    definitions: [probe, slow, boom],
    replay,
    clock,
    logger,
  });
  // start() registers the listener before its first await.
  void commands.start(new AbortController().signal);
  const deliver = (name: string, body: unknown, packet: Partial<IPublishPacket> = {}, topic?: string) => {
    const payload = Buffer.from(typeof body === "string" ? body : JSON.stringify(body));
    bus.emit("message", topic ?? `${PREFIX}/${DEVICE}/cmd/${name}`, payload, packet as IPublishPacket);
  };
  /** Replies are sent synchronously for refusals; a run finishes on a later turn. */
  const settle = () => new Promise((resolve) => setImmediate(resolve));
  return { ops, clock, dir, bus, replies, effects, policy, replay, commands, deliver, settle };
}
