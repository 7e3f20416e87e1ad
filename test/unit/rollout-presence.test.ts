// Issue 26: the rollout driver's presence probe asks a device it cannot see less and less often while it stays
// silent (a fleet switched off for the night must not cost the broker a describe per device every 30 s).
import assert from "node:assert/strict";
import { createPublicKey } from "node:crypto";
import { describe, it } from "node:test";
import type { MqttClient } from "mqtt";
import type { AnswerTrust } from "../../src/cli/answer-trust.ts";
import { PRESENCE_EVERY_MS, PRESENCE_MAX_MS, PresenceProbe } from "../../src/cli/rollout-presence.ts";
import { generateKeys, parsePrivateKey, publicKeyText } from "../../src/commands/keys.ts";

describe("rollout presence probe", () => {
  it("backs off an unanswered device from 30 s to 5 min; each ask is a signed describe to that device", () => {
    const keys = generateKeys();
    const privateKey = parsePrivateKey(keys.privatePem);
    const sent: { topic: string; at: number }[] = [];
    let now = 0;
    const client = {
      publish: (topic: string) => {
        sent.push({ topic, at: now });
      },
    } as unknown as MqttClient;
    const probe = new PresenceProbe({
      client,
      prefix: "p",
      trust: {} as AnswerTrust,
      signer: { privateKey, publicText: publicKeyText(createPublicKey(privateKey)) },
      onSeen: () => {},
    });
    // The driver asks at every turn (0.5 s); only some turns send.
    for (now = 0; now <= 20 * 60_000; now += 500) probe.ask("cam-1", now);
    const gaps = sent.slice(1).map((s, i) => s.at - (sent[i]?.at ?? 0));
    assert.equal(sent[0]?.at, 0);
    assert.deepEqual(gaps.slice(0, 5), [30_000, 60_000, 120_000, 240_000, 300_000]);
    assert.ok(gaps.every((g) => g <= PRESENCE_MAX_MS && g >= PRESENCE_EVERY_MS));
    assert.ok(sent.every((s) => s.topic === "p/cam-1/cmd/describe"));
    // Each device is its own: another is asked at once.
    probe.ask("cam-2", now);
    assert.equal(sent.at(-1)?.topic, "p/cam-2/cmd/describe");
  });
});
