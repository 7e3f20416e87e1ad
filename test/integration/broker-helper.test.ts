// The test broker itself: resume() must resolve only once the restarted mosquitto listens. It used to match
// the previous start's "running" line still in its log and resolve at once (seen as ECONNREFUSED in the soak).
import assert from "node:assert/strict";
import { connect } from "node:net";
import { it } from "node:test";
import mqtt from "mqtt";
import { Mosquitto } from "../helpers/mosquitto.ts";

const accepts = (port: number) =>
  new Promise<boolean>((resolve) => {
    const socket = connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });

it("a restarted test broker accepts connections as soon as resume() resolves, three times over", async () => {
  // With persistence, a start logs in several pieces (config, database restored, listening, running).
  const broker = await Mosquitto.start({ extra: ["persistence true"] });
  const client = await mqtt.connectAsync({ host: "127.0.0.1", port: broker.port });
  for (let i = 0; i < 2000; i++) client.publish(`retained/${i}`, "x".repeat(200), { retain: true, qos: 0 });
  await client.endAsync();
  try {
    for (let i = 0; i < 3; i++) {
      await broker.halt();
      assert.equal(await accepts(broker.port), false, "the halted broker still accepts");
      await broker.resume();
      assert.equal(await accepts(broker.port), true, `restart ${i + 1}: resume() resolved before the broker listened`);
    }
  } finally {
    await broker.stop();
  }
});
