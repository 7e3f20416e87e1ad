// The MQTT link's shapes (link.ts), apart so that connect.ts can use them without importing the link.
import type { IPublishPacket } from "mqtt";
import type { Logger } from "../core/logger.ts";
import type { BrokerEndpoint } from "./options.ts";

export type ProtocolVersion = 4 | 5;

export interface LinkMessage {
  topic: string;
  payload: string | Buffer;
  retain: boolean;
  qos: 0 | 1;
}

export interface LinkOptions extends BrokerEndpoint {
  /** Brokers tried after `url`, in turn, when the current one cannot be reached (the nodes of a cluster). */
  failover?: readonly string[];
  protocolVersion: ProtocolVersion;
  clientId: string;
  rejectUnauthorized: boolean;
  keepaliveMs: number;
  connectTimeoutMs: number;
  reconnectMinMs: number;
  reconnectMaxMs: number;
  /**
   * The largest packet accepted from the broker: announced in CONNECT (MQTT 5, so the broker drops larger
   * messages for us) and enforced on the socket before a packet is buffered (a larger one drops the connection).
   */
  maxPacketSize?: number;
  /** MQTT 5 session expiry in seconds (0: clean session). */
  sessionExpiryS?: number;
  /** Keep the session on MQTT 3.1.1 (it never expires there). */
  persistentSession311?: boolean;
  /** The will, registered at each connect: what the broker says for us when we vanish. */
  will: () => LinkMessage;
  /** Published (retained) after each successful connect, before anything else. */
  birth: () => LinkMessage;
  /** Published (retained) on a clean stop, before the disconnect. */
  farewell: () => LinkMessage;
  logger: Logger;
  random?: () => number;
  /** The monotonic clock (ms): how long a connection lasted. */
  now?: () => number;
}

export interface LinkEvents {
  connected: [{ protocolVersion: ProtocolVersion }];
  disconnected: [];
  message: [topic: string, payload: Buffer, packet: IPublishPacket];
}

/** What the broker announced in its CONNACK (MQTT 5); empty on MQTT 3.1.1. */
export interface BrokerLimits {
  /** Receive Maximum: QoS 1 messages it accepts in flight. */
  receiveMaximum?: number;
  /** Maximum Packet Size. */
  maximumPacketSize?: number;
}
