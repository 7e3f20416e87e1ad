import { it } from "node:test";
import mqtt from "mqtt";
import { Mosquitto } from "../helpers/mosquitto.ts";

/** One MQTT connection, no retries: it succeeds only if the broker listens now. */
async function connectsOnce(port: number): Promise<void> {
  const client = await mqtt.connectAsync({ host: "127.0.0.1", port, reconnectPeriod: 0, connectTimeout: 5000 });
  await client.endAsync(true);
}

it("a restarted test broker takes connections as soon as resume() resolves, three times over", {
  timeout: 60_000,
}, async () => {
  // With persistence, a start logs in several pieces (config, database restored, listening, running).
  const broker = await Mosquitto.start({ extra: ["persistence true"] });
  try {
    const client = await mqtt.connectAsync({ host: "127.0.0.1", port: broker.port });
    for (let i = 0; i < 2000; i++) client.publish(`retained/${i}`, "x".repeat(200), { retain: true, qos: 0 });
    await client.endAsync();
    for (let i = 0; i < 3; i++) {
      await broker.halt();
      await broker.resume();
      await connectsOnce(broker.port).catch((err: Error) => {
        throw new Error(`restart ${i + 1}: resume() resolved before the broker listened: ${err.message}`);
      });
    }
  } finally {
    await broker.stop();
  }
});
