import type { IPublishPacket } from "mqtt";
import { sleep } from "../core/clock.ts";
import { errorMessage, isOutpostError } from "../core/errors.ts";
import { type Component, followAbort, once } from "../core/lifecycle.ts";
import { TokenBucket } from "../core/rate-limit.ts";
import { deviceTopics, EVERY_DEVICE, groupCommandPrefix, nameFromWire } from "../mqtt/topics.ts";
import { requestDigest } from "./answers.ts";
import { COMMAND_NAME, type ReplyBody, unsignedSchema } from "./envelope.ts";
import { dotsSplitWarning, lookOnly, type Route } from "./routes.ts";
import { DEFAULT_MAX_REQUEST, describe, ownResponseTopic, prototypeKey, Refused } from "./rules.ts";
import type { Caller, CommandDefinition, CommandsOptions, PendingReply, RunContext } from "./types.ts";
import { Verifier } from "./verify.ts";

export { allows, DEFAULT_MAX_REQUEST, defineCommand, grantsTrust, REJECTIONS, type Rejection } from "./rules.ts";
export type * from "./types.ts";

const MAX_REMEMBERED = 100_000;
const REPLAY_RETRY_MS = 10_000;
/** Refusals answered and logged: a burst of this many, then this many per second; the rest are only counted. */
const REFUSAL_BURST = 20;
const REFUSALS_PER_SECOND = 2;

interface Accepted {
  id: string;
  definition: CommandDefinition;
  /** The run, bound to the params already checked. */
  run: (context: RunContext) => unknown;
  caller?: Caller;
}

type Send = (body: Omit<ReplyBody, "command" | "device" | "id">) => void;

interface Routing {
  topic: string;
  correlationData?: Buffer;
  /** The sha256 of the request's exact payload: every reply names it (commands/answers.ts). */
  request: string;
  /** The topic the request arrived on: every reply names it too. */
  requestTopic: string;
}

/**
 * Receives requests on `P/D/cmd/<name>` (and `P/_group/<G>/cmd/<name>` for each group of the device),
 * checks them (signature, key, target, time, replay, params) and runs the allowed ones. Replies go out through
 * the outbox, on the MQTT 5 response topic with its correlation data or on `P/D/cmd/<name>/reply`.
 */
export class Commands implements Component {
  readonly name = "commands";
  private readonly o: CommandsOptions;
  private readonly definitions: Map<string, CommandDefinition>;
  private readonly prefixes: string[];
  private readonly controller = new AbortController();
  private readonly running = new Set<Promise<void>>();
  /** Accepted requests waiting for a slot, oldest first. */
  private readonly queue: { accepted: Accepted; send: Send; routing: Routing }[] = [];
  private readonly refusals: TokenBucket;
  private unreported = 0;
  private readonly verifier: Verifier;
  /** Counters by outcome, for tests and telemetry; `suppressed` refusals were neither answered nor logged. */
  readonly counts = { received: 0, executed: 0, refused: 0, suppressed: 0 };
  /** Told each executed command's outcome and duration (the kernel's latency histogram). */
  observe: ((command: string, state: "succeeded" | "failed", seconds: number) => void) | undefined;

  constructor(options: CommandsOptions) {
    this.o = options;
    this.refusals = new TokenBucket({
      capacity: REFUSAL_BURST,
      perSecond: REFUSALS_PER_SECOND,
      mono: () => options.clock.mono(),
    });
    this.definitions = new Map((options.definitions ?? []).map((d) => [d.name, d]));
    this.verifier = new Verifier(options.deviceId, options.groups);
    const p = options.topicPrefix;
    this.prefixes = [
      deviceTopics(p, options.deviceId).commandPrefix,
      ...options.groups.map((g) => groupCommandPrefix(p, g)),
      groupCommandPrefix(p, EVERY_DEVICE),
    ];
    this.misrouted = dotsSplitWarning(this.prefixes, options.logger);
  }

  private readonly misrouted: (topic: string) => void;

  get commandNames(): string[] {
    return [...this.definitions.keys()];
  }

  /** Adds commands (a module's); a name may be defined once. */
  register(definitions: readonly CommandDefinition[]): void {
    for (const d of definitions) {
      if (this.definitions.has(d.name)) throw new Error(`command ${d.name} is defined twice`);
      this.definitions.set(d.name, d);
    }
  }

  /** Sends the final reply of a request whose run deferred it (from a later process). */
  finish(pending: PendingReply, body: Omit<ReplyBody, "command" | "device" | "id">): void {
    const correlationData = pending.correlationData ? Buffer.from(pending.correlationData, "base64") : undefined;
    // A record an older agent kept may name a response topic outside the device's own (P/_ctl/...): the reply
    // then goes where any other would, to P/D/cmd/<name>/reply.
    const own = ownResponseTopic(pending.topic, this.o.topicPrefix, this.o.deviceId);
    this.o.reply({
      topic: own ?? `${this.prefixes[0]}${pending.command}/reply`,
      body: {
        ...body,
        id: pending.id,
        command: pending.command,
        device: this.o.deviceId,
        ...(pending.request ? { request: pending.request } : {}),
        ...(pending.requestTopic ? { requestTopic: pending.requestTopic } : {}),
      },
      ...(correlationData ? { properties: { correlationData } } : {}),
    });
  }

  async start(signal: AbortSignal): Promise<void> {
    followAbort(signal, this.controller);
    for (const prefix of this.prefixes) this.o.source.subscribe(`${prefix}+`);
    this.o.source.on("message", this.onMessage);
    void this.retryReplayStore(this.controller.signal);
  }

  /** Retries an unusable replay store now and then, so that its alarm clears without waiting for a command. */
  private async retryReplayStore(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      await sleep(REPLAY_RETRY_MS, signal, { unref: true });
      if (!signal.aborted) this.o.replay.ensureDurable(this.o.clock.now());
    }
  }

  /** Stops intake and answers the queued requests that will not run; running commands go on. */
  quiesce(): void {
    this.o.source.off("message", this.onMessage);
    for (const { send } of this.queue.splice(0)) {
      send({ state: "failed", error: { code: "COMMAND_ABORTED", message: "the agent stopped before it ran" } });
    }
  }

  /** Stops intake, and waits for the commands that are running. */
  readonly stop = once(async () => {
    this.quiesce();
    // Running commands see their signal abort; the drain waits for them (bounded by shutdown.deadline).
    this.controller.abort();
    await Promise.allSettled([...this.running]);
  });

  readonly onMessage = (topic: string, payload: Buffer, packet: IPublishPacket): void => {
    const prefix = this.prefixes.find((p) => topic.startsWith(p));
    if (prefix === undefined) {
      this.misrouted(topic);
      return;
    }
    // The flat form (`task_list`) names the same command; the reply goes back under the level as it came, which
    // is the form that this broker carries.
    const level = topic.slice(prefix.length);
    const route = {
      name: nameFromWire(level),
      replyTopic: `${this.prefixes[0]}${level}/reply`,
      everyDevice: prefix === this.prefixes.at(-1),
    };
    try {
      this.handle(route, payload, packet);
    } catch (err) {
      this.o.logger.error({ err: errorMessage(err), topic }, "command handling failed");
    }
  };

  private handle(route: Route, payload: Buffer, packet: IPublishPacket): void {
    this.counts.received += 1;
    const props = packet.properties;
    // Replies go only under the device's own P/D/reply/: a request must not make the device publish on another
    // device's topics, a group's command topic or its own command topic, nor anywhere a per-device ACL forbids.
    const ctlTopic = ownResponseTopic(props?.responseTopic, this.o.topicPrefix, this.o.deviceId);
    // Every reply names the request it answers by its digest: an old genuine answer cannot pass for a new one.
    const request = requestDigest(payload);
    const reply = (topic: string | undefined, body: Omit<ReplyBody, "command" | "device">) => {
      if (topic === undefined) return;
      this.o.reply({
        topic,
        body: { request, requestTopic: packet.topic, ...body, command: route.name, device: this.o.deviceId },
        ...(props?.correlationData ? { properties: { correlationData: props.correlationData } } : {}),
      });
    };

    let accepted: Accepted;
    try {
      accepted = this.admit(route, payload);
    } catch (err) {
      if (!(err instanceof Refused)) throw err;
      this.refused(err, route, (body) => reply(err.authenticated ? (ctlTopic ?? route.replyTopic) : ctlTopic, body));
      return;
    }

    const { id } = accepted;
    const routing: Routing = {
      topic: ctlTopic ?? route.replyTopic,
      request,
      requestTopic: packet.topic,
      ...(props?.correlationData ? { correlationData: props.correlationData } : {}),
    };
    const send: Send = (body) => reply(routing.topic, { id, ...body });
    this.o.logger.info({ command: route.name, id, key: accepted.caller?.key }, "command accepted");
    send({ state: "accepted" });
    if (this.running.size < (this.o.maxConcurrent ?? 4)) this.execute(accepted, send, routing);
    else this.queue.push({ accepted, send, routing });
  }

  /**
   * Counts a refusal; answers and logs it only while the refusal budget lasts, so that a flood of garbage
   * costs neither the journal nor the uplink (the count of the rest rides on the next line that is logged).
   */
  private refused(err: Refused, route: Route, answer: (body: Omit<ReplyBody, "command" | "device">) => void): void {
    this.counts.refused += 1;
    if (!this.refusals.take()) {
      this.counts.suppressed += 1;
      this.unreported += 1;
      return;
    }
    const suppressed = this.unreported > 0 ? { suppressed: this.unreported } : {};
    this.unreported = 0;
    this.o.logger.warn(
      { command: route.name, id: err.id, code: err.code, reason: err.message, ...suppressed },
      "command refused",
    );
    // A replayed request's refusal answers the copy, not the request: it carries neither its id nor its digest
    // (the copy repeats the genuine request's), so that nobody can take it for the genuine request's answer.
    const replayed = err.code === "NONCE_REPLAYED" || err.code === "REQUEST_REPLAYED";
    const names = replayed ? { request: undefined } : { id: err.id };
    answer({ ...names, state: "failed", error: { code: err.code, message: err.message } });
  }

  private execute(accepted: Accepted, send: Send, routing: Routing): void {
    const task = this.run(accepted, send, routing).finally(() => {
      this.running.delete(task);
      const next = this.controller.signal.aborted ? undefined : this.queue.shift();
      if (next) this.execute(next.accepted, next.send, next.routing);
    });
    this.running.add(task);
  }

  private async run({ id, definition, run, caller }: Accepted, send: Send, routing: Routing): Promise<void> {
    this.counts.executed += 1;
    const started = this.o.clock.mono();
    const done = (state: "succeeded" | "failed") =>
      this.observe?.(definition.name, state, (this.o.clock.mono() - started) / 1000);
    let deferred = false;
    try {
      const result = await run({
        id,
        progress: (progress) => send({ state: "executing", progress }),
        signal: this.controller.signal,
        ...(caller ? { caller } : {}),
        defer: () => {
          deferred = true;
          const correlationData = routing.correlationData?.toString("base64");
          return {
            id,
            command: definition.name,
            topic: routing.topic,
            request: routing.request,
            requestTopic: routing.requestTopic,
            ...(correlationData ? { correlationData } : {}),
          };
        },
      });
      if (!deferred) send({ state: "succeeded", result: result ?? null });
      done("succeeded");
    } catch (err) {
      const code = isOutpostError(err) ? err.code : "COMMAND_FAILED";
      this.o.logger.warn({ command: definition.name, code, err: errorMessage(err) }, "command failed");
      send({ state: "failed", error: { code, message: errorMessage(err) } });
      done("failed");
    }
  }

  /** Every check a request must pass, in order; throws Refused with the first that fails. */
  private admit(route: Route, payload: Buffer): Accepted {
    let authenticated = false;
    try {
      return this.checks(route, payload, () => {
        authenticated = true;
      });
    } catch (err) {
      if (err instanceof Refused) err.authenticated = authenticated;
      throw err;
    }
  }

  /** `authenticated` is called once the sender is known to be allowed to ask at all. */
  private checks(route: Route, payload: Buffer, authenticated: () => void): Accepted {
    const policy = this.o.policy();
    const now = this.o.clock.now();
    if (!COMMAND_NAME.test(route.name)) {
      throw new Refused("UNKNOWN_COMMAND", `no command ${JSON.stringify(route.name.slice(0, 64))}`);
    }
    // Before anything is parsed: an unauthenticated sender must not make the device spend memory on a request.
    const cap = this.definitions.get(route.name)?.maxRequestBytes ?? DEFAULT_MAX_REQUEST;
    if (payload.length > cap) {
      throw new Refused(
        "REQUEST_TOO_LARGE",
        `the request has ${payload.length} bytes; ${route.name} takes at most ${cap}`,
      );
    }
    let raw: unknown;
    try {
      raw = JSON.parse(payload.toString("utf8"));
    } catch {
      throw new Refused("BAD_REQUEST", "the request is not JSON");
    }
    const looksSigned = raw !== null && typeof raw === "object" && ("sig" in raw || "payload" in raw);
    let id: string;
    let params: unknown;
    if (looksSigned) {
      const request = this.verifier.verify(raw, policy, route, now, authenticated);
      ({ id, params } = request);
      const expires = request.expiresAt + policy.skewMs;
      const replayed = this.o.replay.check(id, request.nonce, now);
      if (replayed)
        throw new Refused(replayed, `request ${replayed === "NONCE_REPLAYED" ? "nonce" : "id"} seen before`, id);
      const checked = this.definition(route.name, params, id);
      lookOnly(route, request.group, checked.definition, id);
      this.remember(checked.definition, id, request.nonce, expires, now);
      return { id, ...checked, caller: request.caller };
    }
    if (!policy.allowUnsigned) {
      const maybeId = (raw as { id?: unknown } | null)?.id;
      throw new Refused(
        "COMMAND_UNSIGNED",
        "unsigned commands are refused (commands.allowUnsigned is false)",
        typeof maybeId === "string" ? maybeId.slice(0, 128) : undefined,
      );
    }
    authenticated();
    const parsed = unsignedSchema.safeParse(raw);
    if (!parsed.success) throw new Refused("BAD_REQUEST", describe(parsed.error));
    ({ id, params } = parsed.data);
    if (this.o.replay.check(id, undefined, now)) throw new Refused("REQUEST_REPLAYED", "request id seen before", id);
    const checked = this.definition(route.name, params, id);
    lookOnly(route, undefined, checked.definition, id);
    this.remember(checked.definition, id, undefined, now + policy.maxValidityMs, now);
    return { id, ...checked };
  }

  /**
   * Records the request before it runs. A command that changes state runs only once that record is on disk:
   * otherwise a captured copy could run it again after every restart (fail closed). One that changes nothing
   * (ping, describe, config.get, task.list, ...) is kept in memory only: after a restart a captured copy can
   * be answered once more, a read bound to that request of what the device reports anyway.
   */
  private remember(definition: CommandDefinition, id: string, nonce: string | undefined, expires: number, now: number) {
    try {
      this.o.replay.remember(id, nonce, expires, now, definition.changesState !== false);
    } catch (err) {
      if (definition.changesState === false) return;
      throw new Refused(
        "REPLAY_STORE_UNAVAILABLE",
        `${errorMessage(err)}: commands that change state are refused until state.dir can be written`,
        id,
      );
    }
  }

  /** The command and its run bound to the checked params, if it may run now. */
  private definition(
    name: string,
    params: unknown,
    id: string,
  ): { definition: CommandDefinition; run: (context: RunContext) => unknown } {
    const definition = this.definitions.get(name);
    if (!definition) throw new Refused("UNKNOWN_COMMAND", `no command ${JSON.stringify(name)}`, id);
    // Checked before any schema: zod's records assign such a key, which changes the prototype and loses it.
    const unsafe = prototypeKey(params, "params");
    if (unsafe) throw new Refused("BAD_PARAMS", `${unsafe}: expected a plain key, not one that names a prototype`, id);
    const checked = definition.bind(params);
    if (!checked.ok) throw new Refused("BAD_PARAMS", checked.message, id);
    if (definition.changesState !== false && !this.o.replay.ensureDurable(this.o.clock.now())) {
      throw new Refused(
        "REPLAY_STORE_UNAVAILABLE",
        "command replay records cannot be stored: commands that change state are refused until state.dir can be written",
        id,
      );
    }
    const slots = (this.o.maxConcurrent ?? 4) + (this.o.maxQueued ?? 64);
    if (this.running.size + this.queue.length >= slots) {
      throw new Refused("BUSY", "too many commands running and waiting; try again", id);
    }
    // Entries leave only when their request expires: a flood of accepted requests must not grow memory
    // without end.
    if (this.o.replay.size >= MAX_REMEMBERED) {
      throw new Refused("BUSY", "too many recent requests to remember; try again later", id);
    }
    return { definition, run: checked.run };
  }
}
