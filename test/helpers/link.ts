import { pino } from "pino";
import { MqttLink, type ProtocolVersion } from "../../src/mqtt/link.ts";

/** A real MqttLink with quiet logs and fast reconnects, for driving the outbox in-process. */
export function testLink(
  port: number,
  protocolVersion: ProtocolVersion = 5,
  clientId = `link-${port}-${protocolVersion}`,
  failover: string[] = [],
): MqttLink {
  const status = () => ({ topic: "outpost/v1/test/status", payload: "{}", qos: 1 as const, retain: true });
  return new MqttLink({
    url: `mqtt://127.0.0.1:${port}`,
    failover,
    protocolVersion,
    clientId,
    rejectUnauthorized: true,
    keepaliveMs: 5000,
    connectTimeoutMs: 2000,
    reconnectMinMs: 50,
    reconnectMaxMs: 500,
    will: status,
    birth: status,
    farewell: status,
    logger: pino({ level: "silent" }),
  });
}
