import { EventEmitter } from "node:events";
import type { IPublishPacket } from "mqtt";
import { pino } from "pino";
import { z } from "zod";
import {
  type CommandDefinition,
  type CommandPolicy,
  Commands,
  defineCommand,
  type Reply,
} from "../../src/commands/commands.ts";
import { type CommandRequest, newRequest, type SignedEnvelope, signPayload } from "../../src/commands/envelope.ts";
import { generateKeys, parsePrivateKey } from "../../src/commands/keys.ts";
import { ReplayGuard } from "../../src/commands/replay.ts";
import { ManualClock } from "../../src/core/clock.ts";
import type { Code } from "../../src/core/codes.ts";
import { OutpostError } from "../../src/core/errors.ts";
import { tempDir } from "./temp.ts";

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
/** Where `ctl` asks for its replies: the only response topics a device answers on. */
export const CTL_REPLY = `${PREFIX}/${DEVICE}/reply/test`;

export function harness(
  options: {
    policy?: Partial<CommandPolicy>;
    dir?: string;
    groups?: string[];
    /** The MQTT 5 response topic of every delivered request that names no packet of its own. */
    responseTopic?: string;
  } = {},
) {
  const ops = operatorKey();
  const clock = new ManualClock(T0);
  const dir = options.dir ?? tempDir("outpost-cmd-");
  // Every log line the handler writes, parsed: tests count them.
  const logs: Record<string, unknown>[] = [];
  const logger = pino(
    { level: "info" },
    { write: (line: string) => logs.push(JSON.parse(line) as Record<string, unknown>) },
  );
  const bus = new Bus();
  const replies: Reply[] = [];
  const effects: unknown[] = [];
  const probe: CommandDefinition = defineCommand({
    name: "probe",
    params: z.strictObject({ n: z.number().int() }).optional(),
    run: (params) => {
      effects.push(params);
      return { done: true };
    },
  });
  const slow: CommandDefinition = defineCommand({
    name: "slow",
    params: z.undefined(),
    run: async (_params, context) => {
      context.progress({ step: 1 });
      effects.push("slow");
      return "finished";
    },
  });
  /** Reads only: may run while replay records cannot be stored. */
  const look: CommandDefinition = defineCommand({
    name: "look",
    params: z.undefined(),
    changesState: false,
    run: () => {
      effects.push("look");
      return "seen";
    },
  });
  /** Runs until the test releases it. */
  const gates: (() => void)[] = [];
  const block: CommandDefinition = defineCommand({
    name: "block",
    params: z.undefined(),
    run: () => new Promise<void>((resolve) => gates.push(resolve)).then(() => effects.push("block")),
  });
  const boom: CommandDefinition = defineCommand({
    name: "boom",
    params: z.undefined(),
    run: () => {
      // A code of a capability the registry does not know: what the handler passes on is whatever code it gets.
      throw new OutpostError("DISK_FULL" as Code, "no space left");
    },
  });
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
    definitions: [probe, slow, look, block, boom],
    replay,
    clock,
    logger,
  });
  // start() registers the listener before its first await.
  void commands.start(new AbortController().signal);
  const defaultPacket: Partial<IPublishPacket> = options.responseTopic
    ? { properties: { responseTopic: options.responseTopic } }
    : {};
  const deliver = (name: string, body: unknown, packet: Partial<IPublishPacket> = defaultPacket, topic?: string) => {
    const payload = Buffer.from(typeof body === "string" ? body : JSON.stringify(body));
    bus.emit("message", topic ?? `${PREFIX}/${DEVICE}/cmd/${name}`, payload, packet as IPublishPacket);
  };
  /** Replies are sent synchronously for refusals; a run finishes on a later turn. */
  const settle = () => new Promise((resolve) => setImmediate(resolve));
  const release = () => {
    for (const gate of gates.splice(0)) gate();
  };
  return { ops, clock, dir, bus, replies, effects, logs, policy, replay, commands, deliver, settle, release };
}
