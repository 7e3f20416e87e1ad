// Issue 25, item 2: a device signs what it says with its own key; the signature covers a context of its own,
// the device id, the full topic and the exact payload, and rides in the payload.
import assert from "node:assert/strict";
import { generateKeyPairSync, sign } from "node:crypto";
import { describe, it } from "node:test";
import { ANSWER_CONTEXT, checkAnswer, requestDigest, signAnswer } from "../../src/commands/answers.ts";
import { SIGNING_CONTEXT } from "../../src/commands/envelope.ts";
import { RELEASE_CONTEXT } from "../../src/ota/manifest.ts";
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
