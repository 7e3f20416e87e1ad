// The review of 0710526 (issue 25): one malformed message on a reply topic crashed `ctl call` (an unsigned reply
// whose state was a number: `said.slice is not a function`) and `ctl update` (`null` on P/D/update). Anyone on
// the broker can publish there. DeviceCaller reads a reply only in its own shape.
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { EventEmitter } from "node:events";
import { describe, it } from "node:test";
import type { MqttClient } from "mqtt";
import { AnswerTrust } from "../../src/cli/answer-trust.ts";
import { DeviceCaller } from "../../src/cli/ctl-client.ts";
import { KnownDevices } from "../../src/cli/known-devices.ts";
import { publicKeyText } from "../../src/commands/keys.ts";
import { operatorKey } from "../helpers/commands.ts";

/** Just enough of an MQTT client: what DeviceCaller publishes is answered by `answer`. */
function fakeClient(answer: (topic: string, payload: string, emit: (t: string, p: string) => void) => void) {
  const bus = new EventEmitter();
  const emit = (t: string, p: string) => bus.emit("message", t, Buffer.from(p), { topic: t });
  return Object.assign(bus, {
    options: { protocolVersion: 4 },
    subscribeAsync: async () => [],
    publishAsync: async (topic: string, payload: string) => {
      setImmediate(() => answer(topic, payload, emit));
    },
  }) as unknown as MqttClient;
}

describe("DeviceCaller and hostile replies", () => {
  it("replies of another shape are not read, and nothing throws", async () => {
    const key = operatorKey();
    const client = fakeClient((_topic, payload, emit) => {
      const { id } = JSON.parse((JSON.parse(payload) as { payload: string }).payload) as { id: string };
      const reply = "outpost/v1/pi-1/cmd/ping/reply";
      for (const bad of [
        "null",
        "[]",
        "5",
        "{}",
        JSON.stringify({ id, device: "pi-1", command: "ping", state: 5 }),
        JSON.stringify({ id, device: "pi-1", command: "ping", state: { toString: 0 } }),
        JSON.stringify({ id, device: 5, command: "ping", state: "succeeded" }),
        JSON.stringify({ id, device: "pi-1", command: "ping", state: "failed", error: { code: 1, message: {} } }),
        JSON.stringify({ id: { $: 1 }, device: "pi-1", command: "ping", state: "succeeded" }),
      ]) {
        emit(reply, bad);
      }
      // Then an unsigned reply of the right shape: shown, not counted.
      emit(reply, JSON.stringify({ id, device: "pi-1", command: "ping", state: "succeeded", result: { pong: true } }));
    });
    const pins = KnownDevices.none();
    pins.pin({
      broker: "127.0.0.1:1883",
      prefix: "outpost/v1",
      device: "pi-1",
      key: publicKeyText(generateKeyPairSync("ed25519").publicKey),
    });
    const trust = new AnswerTrust({ pins, broker: "mqtt://127.0.0.1:1883", prefix: "outpost/v1", acceptNew: false });
    const seen: string[] = [];
    // A fake client answers no broker probe: the form is given.
    const caller = new DeviceCaller(client, "outpost/v1", key, trust, "dotted");
    const result = await caller.call({
      device: "pi-1",
      command: "ping",
      timeoutMs: 300,
      validityMs: 60_000,
      onReply: (reply, verdict) => seen.push(`${reply.state} ${verdict.trust}`),
    });
    assert.deepEqual(seen, ["succeeded unsigned"]);
    assert.equal(result.finals.length, 0);
    assert.equal(result.timedOut, true, "a pinned device's unsigned answer does not end the wait: its own may come");
  });

  it("a pin is kept in one form, whatever form the key came in", () => {
    const { publicKey } = generateKeyPairSync("ed25519");
    const pins = KnownDevices.none();
    const pem = publicKey.export({ format: "pem", type: "spki" }).toString();
    pins.pin({ broker: "*", prefix: "p", device: "d", key: `\n${pem}` });
    assert.equal(pins.find("x:1", "p", "d")?.key, publicKeyText(publicKey));
  });
});
