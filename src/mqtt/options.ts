import { readFileSync } from "node:fs";
import type { IClientOptions } from "mqtt";

/** Where a broker is and how to prove who we are: what the agent and `outpost ctl` both need. */
export interface BrokerEndpoint {
  url: string;
  username?: string;
  password?: string;
  /** Paths of PEM files; read at each connect so that rotated certificates are picked up. */
  ca?: string;
  cert?: string;
  key?: string;
  rejectUnauthorized?: boolean;
  connectTimeoutMs?: number;
}

/** MQTT 5 "unsupported protocol version" and MQTT 3.1.1 "unacceptable protocol version". */
export const PROTOCOL_REFUSED: ReadonlySet<number> = new Set([0x84, 1]);

/** Whether a failed MQTT 5 connect means: try again with 3.1.1. */
export function refusedMqtt5(protocolVersion: 4 | 5, err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return protocolVersion === 5 && typeof code === "number" && PROTOCOL_REFUSED.has(code);
}

/** MQTT.js options for an endpoint: protocol, host, port, credentials (from the URL if not given), TLS files. */
export function endpointOptions(e: BrokerEndpoint): IClientOptions {
  const url = new URL(e.url);
  const secure = url.protocol === "mqtts:";
  const username = e.username ?? (url.username ? decodeURIComponent(url.username) : undefined);
  const password = e.password ?? (url.password ? decodeURIComponent(url.password) : undefined);
  return {
    protocol: secure ? "mqtts" : "mqtt",
    host: url.hostname.replace(/^\[|\]$/g, ""),
    port: url.port ? Number(url.port) : secure ? 8883 : 1883,
    ...(username === undefined ? {} : { username }),
    ...(password === undefined ? {} : { password }),
    connectTimeout: e.connectTimeoutMs ?? 10_000,
    // Off: mqtt-packet's number cache is 65,536 two-byte Buffers made at the first packet, 7 MiB of heap kept
    // for good (a third of the agent's idle heap); a packet id is written from a fresh 2-byte Buffer instead.
    // The switch is global to mqtt-packet, so every client in the process goes without the cache.
    writeCache: false,
    rejectUnauthorized: e.rejectUnauthorized ?? true,
    ...(e.ca ? { ca: readFileSync(e.ca) } : {}),
    ...(e.cert ? { cert: readFileSync(e.cert) } : {}),
    ...(e.key ? { key: readFileSync(e.key) } : {}),
  };
}

/** A password file's content without its final line break. */
export function readPasswordFile(path: string): string {
  return readFileSync(path, "utf8").replace(/\r?\n$/, "");
}
