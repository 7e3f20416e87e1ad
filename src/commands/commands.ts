import type { IPublishPacket } from "mqtt";
import { z } from "zod";
import type { Clock } from "../core/clock.ts";
import { errorMessage } from "../core/errors.ts";
import { type Component, once } from "../core/lifecycle.ts";
import type { Logger } from "../core/logger.ts";

/** What the command handler needs from the MQTT link. */
export interface CommandSource {
  subscribe(topic: string): void;
  on(event: "message", listener: (topic: string, payload: Buffer, packet: IPublishPacket) => void): unknown;
  off(event: "message", listener: (topic: string, payload: Buffer, packet: IPublishPacket) => void): unknown;
}

export interface Reply {
  topic: string;
  body: Record<string, unknown>;
  properties?: { correlationData?: Buffer };
}

export interface CommandsOptions {
  source: CommandSource;
  /** Topic prefix of this device's commands, `P/D/cmd`. */
  commandPrefix: string;
  /** Sends a reply through the outbox (class "result"). */
  reply: (reply: Reply) => void;
  allowUnsigned: () => boolean;
  clock: Clock;
  logger: Logger;
}

const requestSchema = z.object({
  id: z.string().min(1).max(128),
  params: z.unknown().optional(),
  signature: z.unknown().optional(),
});

const NAME = /^[a-z][a-z0-9.-]{0,63}$/;

/**
 * Receives requests on `P/D/cmd/<name>` and answers each one, on the MQTT 5 response topic with its
 * correlation data, or on `P/D/cmd/<name>/reply`. This first version verifies no signatures: it refuses
 * every request with COMMAND_UNSIGNED unless `commands.allowUnsigned` is set, and then knows only `ping`.
 */
export class Commands implements Component {
  readonly name = "commands";
  private readonly o: CommandsOptions;
  handled = 0;

  constructor(options: CommandsOptions) {
    this.o = options;
  }

  async start(_signal: AbortSignal): Promise<void> {
    this.o.source.subscribe(`${this.o.commandPrefix}/+`);
    this.o.source.on("message", this.onMessage);
  }

  readonly stop = once(async () => {
    this.o.source.off("message", this.onMessage);
  });

  private readonly onMessage = (topic: string, payload: Buffer, packet: IPublishPacket): void => {
    if (!topic.startsWith(`${this.o.commandPrefix}/`)) return;
    const name = topic.slice(this.o.commandPrefix.length + 1);
    try {
      this.handle(name, payload, packet);
    } catch (err) {
      this.o.logger.error({ err: errorMessage(err), topic }, "command handling failed");
    }
  };

  private handle(name: string, payload: Buffer, packet: IPublishPacket): void {
    this.handled += 1;
    const props = packet.properties;
    const replyTo = props?.responseTopic ?? `${this.o.commandPrefix}/${name}/reply`;
    const send = (id: string | undefined, body: Record<string, unknown>) =>
      this.o.reply({
        topic: replyTo,
        body: { id, command: name, ...body },
        ...(props?.correlationData ? { properties: { correlationData: props.correlationData } } : {}),
      });
    const fail = (id: string | undefined, code: string, message: string) => {
      this.o.logger.warn({ command: name, id, code }, "command refused");
      send(id, { state: "failed", error: { code, message } });
    };

    let raw: unknown;
    try {
      raw = JSON.parse(payload.toString("utf8"));
    } catch {
      fail(undefined, "BAD_REQUEST", "the request is not JSON");
      return;
    }
    const parsed = requestSchema.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      fail(undefined, "BAD_REQUEST", `${issue?.path.join(".") || "(request)"}: ${issue?.message ?? "invalid"}`);
      return;
    }
    const { id } = parsed.data;
    if (!NAME.test(name)) {
      fail(id, "UNKNOWN_COMMAND", `no command ${JSON.stringify(name)}`);
      return;
    }
    if (parsed.data.signature !== undefined) {
      fail(id, "SIGNATURE_UNSUPPORTED", "this version does not verify signed commands yet");
      return;
    }
    if (!this.o.allowUnsigned()) {
      fail(id, "COMMAND_UNSIGNED", "unsigned commands are refused (commands.allowUnsigned is false)");
      return;
    }
    if (name === "ping") {
      send(id, { state: "succeeded", result: { pong: true, ts: this.o.clock.now() } });
      return;
    }
    fail(id, "UNKNOWN_COMMAND", `no command ${JSON.stringify(name)}`);
  }
}
