import mqtt, { type IClientOptions, type IConnackPacket, type IPublishPacket, type MqttClient } from "mqtt";
import { errorMessage, OutpostError } from "../core/errors.ts";
import { withDeadline } from "../core/lifecycle.ts";
import type { Logger } from "../core/logger.ts";
import { FilteredStream } from "./filtered-stream.ts";
import type { BrokerLimits, LinkOptions, ProtocolVersion } from "./link-types.ts";
import { endpointOptions } from "./options.ts";
import { packetGuard } from "./packet-guard.ts";

/**
 * One connection attempt: MQTT.js set up the way the link needs it (no reconnects of its own, our message ids,
 * its debug log off, the packet size enforced before a packet is buffered), resolved at CONNACK with the
 * limits the broker announced, rejected on an error, a close or the signal before it.
 */
export function openClient(
  o: LinkOptions,
  protocol: ProtocolVersion,
  signal: AbortSignal,
  log: Logger,
  onMessage: (topic: string, payload: Buffer, packet: IPublishPacket) => void,
): Promise<{ client: MqttClient; limits: BrokerLimits }> {
  const will = o.will();
  const options: IClientOptions = {
    ...endpointOptions(o),
    protocolVersion: protocol,
    ...(protocol === 5
      ? {
          properties: {
            ...(o.maxPacketSize ? { maximumPacketSize: o.maxPacketSize } : {}),
            ...(o.sessionExpiryS ? { sessionExpiryInterval: o.sessionExpiryS } : {}),
          },
        }
      : {}),
    clientId: o.clientId,
    keepalive: Math.max(1, Math.round(o.keepaliveMs / 1000)),
    reconnectPeriod: 0,
    // Requests queued by the broker while the device was away arrive after the reconnect and are then judged
    // by their own expiry and replay checks.
    clean: protocol === 5 ? (o.sessionExpiryS ?? 0) === 0 : o.persistentSession311 !== true,
    resubscribe: false,
    queueQoSZero: false,
    messageIdProvider: new mqtt.UniqueMessageIdProvider(),
    // MQTT.js calls its debug logger several times per packet even when it prints nothing: measurable
    // CPU per message while a backlog drains. Our own logs say what matters.
    log: () => {},
    will: { topic: will.topic, payload: Buffer.from(will.payload), qos: will.qos, retain: will.retain },
  };
  return new Promise((resolve, reject) => {
    const limit = o.maxPacketSize;
    // MQTT 3.1.1 cannot tell the broker our limit: larger packets are read past and dropped on the way in
    // (the connection stays). MQTT 5 announces it; a broker that ignores it has the connection dropped below.
    const filtered = limit !== undefined && protocol === 4;
    const client = filtered
      ? new mqtt.MqttClient(
          () =>
            new FilteredStream(options, limit, (p) =>
              log.warn(
                { size: p.size, limit, topic: p.topic, qos: p.qos },
                "dropped a message larger than mqtt.maxPacketSize (read past, acknowledged; the connection stays)",
              ),
            ),
          options,
        )
      : mqtt.connect(options);
    // Before the connection is up: a persistent session delivers queued requests right after CONNACK, and
    // MQTT.js acknowledges a message whether or not anyone listens.
    client.on("message", onMessage);
    const stream = client.stream as (NodeJS.ReadableStream & { destroy(): void }) | undefined;
    if (limit !== undefined && stream && !filtered) {
      // Ahead of MQTT.js's own reader, so that an oversized packet is refused before it is buffered.
      stream.prependListener(
        "data",
        packetGuard(limit, (size, topic) => {
          log.warn(
            { size, limit, topic },
            "the broker sent a packet larger than mqtt.maxPacketSize; dropping the connection",
          );
          stream.destroy();
        }),
      );
    }
    const cleanup = () => {
      client.off("connect", onConnect);
      client.off("error", onError);
      client.off("close", onClose);
      signal.removeEventListener("abort", onAbort);
    };
    const onConnect = (connack: IConnackPacket) => {
      cleanup();
      const limits = {
        receiveMaximum: connack.properties?.receiveMaximum,
        maximumPacketSize: connack.properties?.maximumPacketSize,
      };
      // Errors after the connect are reported by "close"; keep a listener so none is unhandled.
      client.on("error", (err) => log.warn({ err: errorMessage(err) }, "mqtt error"));
      resolve({ client, limits });
    };
    const onError = (err: Error) => {
      cleanup();
      client.end(true);
      reject(err);
    };
    const onClose = () => onError(new OutpostError("MQTT_CLOSED", "connection closed before CONNACK"));
    const onAbort = () => onError(new OutpostError("ABORTED", "stopping"));
    client.on("connect", onConnect);
    client.on("error", onError);
    client.on("close", onClose);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** Fails every publish of `client` still waiting for its acknowledgement (MQTT.js 5.16's own `_flush`). */
export function failPending(client: MqttClient): void {
  const flush = (client as unknown as { _flush?: () => void })._flush;
  if (typeof flush === "function") flush.call(client);
}

/** `promise`, or a TIMEOUT error after `ms`. */
export function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  return withDeadline(promise, ms, () => new OutpostError("TIMEOUT", `timed out after ${ms}ms`));
}
