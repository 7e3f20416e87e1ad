import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import { Collected } from "./wait.ts";

export interface Received {
  topic: string;
  text: string;
  json: Record<string, unknown>;
  retain: boolean;
}

/** An independent MQTT subscriber that records everything on some topics. */
export class Watch extends Collected<Received> {
  readonly client: MqttClient;
  /** Connections after the first: a clean-session watcher that reconnected may have missed messages. */
  reconnects = 0;

  private constructor(client: MqttClient) {
    super();
    this.client = client;
    client.on("connect", () => {
      this.reconnects += 1;
    });
    client.on("message", (topic, payload, packet) => {
      const text = payload.toString();
      let json: Record<string, unknown> = {};
      try {
        json = JSON.parse(text) as Record<string, unknown>;
      } catch {
        // not JSON: keep the text
      }
      this.push({ topic, text, json, retain: packet.retain });
    });
  }

  static async open(port: number, topics: string[], options: IClientOptions = {}): Promise<Watch> {
    const client = await mqtt.connectAsync({
      host: "127.0.0.1",
      port,
      protocolVersion: 5,
      reconnectPeriod: 500,
      ...options,
    });
    const watch = new Watch(client);
    await client.subscribeAsync(topics, { qos: 1 });
    return watch;
  }

  telemetry(session?: string): Received[] {
    return this.items.filter((m) => m.topic.endsWith("/telemetry") && (!session || m.json.session === session));
  }

  async close(): Promise<void> {
    await this.client.endAsync(true);
  }
}
