// Issue 25, item 2: a device signs what it says with its own key; the signature covers a context of its own,
// the device id, the full topic and the exact payload, and rides in the payload.
import assert from "node:assert/strict";
import { generateKeyPairSync, sign } from "node:crypto";
import { describe, it } from "node:test";
import pino from "pino";
import { ANSWER_CONTEXT, checkAnswer, requestDigest, SIGNATURE_BYTES, signAnswer } from "../../src/commands/answers.ts";
import { SIGNING_CONTEXT } from "../../src/commands/envelope.ts";
import { RetainedState } from "../../src/kernel/retained.ts";
import { answerSigner } from "../../src/kernel/status.ts";
import { deviceTopics } from "../../src/mqtt/topics.ts";
import { RELEASE_CONTEXT } from "../../src/ota/manifest.ts";
import { packetSize } from "../../src/outbox/wire.ts";
import { harness, request, sign as signRequest } from "../helpers/commands.ts";

const { privateKey, publicKey } = generateKeyPairSync("ed25519");
const other = generateKeyPairSync("ed25519");
const topic = "outpost/pi-1/cmd/ping/reply";
const body = JSON.stringify({ id: "r1", command: "ping", device: "pi-1", state: "succeeded", result: { pong: true } });

describe("signed answers", () => {
  it("verify with the device's key, and stay valid JSON with the signature as the last field", () => {
    const signed = signAnswer(privateKey, "pi-1", topic, body);
    assert.deepEqual(checkAnswer(publicKey, "pi-1", topic, signed), { state: "verified" });
    const parsed = JSON.parse(signed) as Record<string, unknown>;
    assert.equal(parsed.id, "r1");
    assert.equal(typeof parsed.sig, "string");
    assert.equal(checkAnswer(publicKey, "pi-1", "t", signAnswer(privateKey, "pi-1", "t", "{}")).state, "verified");
  });

  it("fail for another key, another device id, another topic, or a changed byte", () => {
    const signed = signAnswer(privateKey, "pi-1", topic, body);
    assert.equal(checkAnswer(other.publicKey, "pi-1", topic, signed).state, "invalid");
    assert.equal(checkAnswer(publicKey, "pi-2", topic, signed).state, "invalid");
    assert.equal(checkAnswer(publicKey, "pi-1", "outpost/pi-2/cmd/ping/reply", signed).state, "invalid");
    assert.equal(checkAnswer(publicKey, "pi-1", topic, signed.replace('"pong":true', '"pong":false')).state, "invalid");
    assert.equal(checkAnswer(publicKey, "pi-1", topic, `{"replayed":true,${signed.slice(1)}`).state, "invalid");
    assert.equal(checkAnswer(publicKey, "pi-1", topic, body).state, "unsigned");
  });

  it("have a context of their own: an operator's or a release signature over the same bytes never verifies", () => {
    for (const context of [SIGNING_CONTEXT, RELEASE_CONTEXT]) {
      const bytes = Buffer.from(`${context}pi-1\n${topic}\n${body}`, "utf8");
      const forged = `${body.slice(0, -1)},"sig":"${sign(null, bytes, privateKey).toString("base64")}"}`;
      assert.equal(checkAnswer(publicKey, "pi-1", topic, forged).state, "invalid", context);
    }
    assert.notEqual(ANSWER_CONTEXT, SIGNING_CONTEXT);
    assert.notEqual(ANSWER_CONTEXT, RELEASE_CONTEXT);
  });

  it("a request is named by the sha256 of its exact payload", () => {
    assert.equal(requestDigest('{"a":1}'), requestDigest(Buffer.from('{"a":1}')));
    assert.match(requestDigest("x"), /^[0-9a-f]{64}$/);
  });
});

describe("every reply names the request it answers", () => {
  it("by the sha256 of the request's exact payload, in every state, refusals included", async () => {
    const h = harness();
    const env = signRequest(h.ops, request({ command: "probe", params: { n: 1 } }));
    const payload = JSON.stringify(env);
    h.deliver("probe", payload);
    await h.settle();
    await h.settle();
    const unknown = JSON.stringify(signRequest(h.ops, request({ command: "nope" })));
    h.deliver("nope", unknown);
    await h.settle();
    const digests = h.replies.map((r) => (r.body as { request?: string }).request);
    assert.ok(h.replies.length >= 3, JSON.stringify(h.replies));
    assert.deepEqual(
      digests.slice(0, -1),
      digests.slice(0, -1).map(() => requestDigest(payload)),
    );
    assert.equal(digests.at(-1), requestDigest(unknown), "a refusal names it too");
  });
});

describe("found by review of the signing", () => {
  it("the device id and the topic cannot trade bytes with the payload (a newline in a response topic)", () => {
    const payload = '\n{"state":"succeeded","sig":"x"}';
    const signed = signAnswer(privateKey, "pi-1", "outpost/pi-1/reply/a\n", body);
    const shifted = `${payload.slice(0, 0)}${signed}`;
    assert.equal(checkAnswer(publicKey, "pi-1", "outpost/pi-1/reply/a", `\n${shifted}`).state, "invalid");
  });

  it("a signature field not preceded by a comma is not one (the payload would not be JSON)", () => {
    const signed = signAnswer(privateKey, "pi-1", topic, body);
    assert.equal(checkAnswer(publicKey, "pi-1", topic, signed.replace(',"sig"', '"sig"')).state, "invalid");
  });

  it("signs replies on any topic and the device's retained states, never telemetry nor Home Assistant's", () => {
    const topics = deviceTopics("outpost", "pi-1");
    const signer = answerSigner(privateKey, "pi-1", topics, "s-1");
    const isSigned = (text: string) => checkAnswer(publicKey, "pi-1", "t", text).state !== "unsigned";
    assert.ok(isSigned(signer.message("outpost/pi-1/reply/op", body)), "a reply on an MQTT 5 response topic");
    for (const t of [topics.status, topics.update, `${topics.alarm("x")}/state`])
      assert.ok(isSigned(signer.retained.sign(t, body)), t);
    for (const t of [topics.telemetryFull, topics.state, "homeassistant/sensor/outpost_pi-1/cpu/config"]) {
      assert.equal(signer.retained.sign(t, body), body, t);
    }
    assert.equal(signer.message("t", "not json"), "not json", "only a JSON object's text is signed");
  });

  it("telemetry is signed only while telemetry.sign is on; every other class always", () => {
    const signer = answerSigner(privateKey, "pi-1", deviceTopics("outpost", "pi-1"), "s-1");
    const isSigned = (text: string) => checkAnswer(publicKey, "pi-1", "t", text).state !== "unsigned";
    let on = false;
    const outbox = signer.outbox(() => on);
    assert.equal(outbox("outpost/pi-1/telemetry", body, "telemetry"), body);
    assert.ok(isSigned(outbox("outpost/pi-1/alarms/x", body, "alarm")));
    on = true;
    assert.ok(isSigned(outbox("outpost/pi-1/telemetry", body, "telemetry")), "read at each message: a reload applies");
  });

  it("the device's retained states carry the session and a seq that rises with each new value", () => {
    const topics = deviceTopics("outpost", "pi-1");
    const signer = answerSigner(privateKey, "pi-1", topics, "s-1");
    const sent: { topic: string; payload: string }[] = [];
    const link = {
      connected: true,
      publish: async (t: string, payload: string) => {
        sent.push({ topic: t, payload });
      },
      on: () => link,
      off: () => link,
    };
    const retained = new RetainedState(link, pino({ level: "silent" }), signer.retained);
    retained.set(topics.update, { state: "downloading", done: 1 });
    retained.set(`${topics.alarm("disk")}/state`, { alarm: "disk", active: true });
    retained.set(topics.update, { state: "downloading", done: 1 }); // the same value: nothing sent
    retained.set(topics.update, { state: "staged" });
    retained.set(topics.telemetryFull, { metrics: {} });
    const bodies = sent.map((m) => JSON.parse(m.payload) as { session?: string; seq?: number; sig?: string });
    assert.deepEqual(
      bodies.map((b) => [b.session, b.seq, typeof b.sig]),
      [
        ["s-1", 1, "string"],
        ["s-1", 2, "string"],
        ["s-1", 3, "string"],
        [undefined, undefined, "undefined"],
      ],
    );
  });

  it("the outbox's size check leaves room for the signature", () => {
    const entry = { bytes: 1000, props: null } as unknown as Parameters<typeof packetSize>[0];
    assert.ok(packetSize(entry) >= 1000 + 18 + SIGNATURE_BYTES);
    const signed = signAnswer(privateKey, "pi-1", topic, body);
    assert.equal(Buffer.byteLength(signed) - Buffer.byteLength(body), SIGNATURE_BYTES);
  });
});
