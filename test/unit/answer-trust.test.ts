// Issue 25 item 3: what ctl believes of a device's answer. Before it, ctl counted any message that carried the
// request's id: a broker login alone forged results, outcomes and whole devices.
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { lstatSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { AnswerTrust } from "../../src/cli/answer-trust.ts";
import { brokerId, brokerIds, KnownDevices } from "../../src/cli/known-devices.ts";
import { requestDigest, signAnswer } from "../../src/commands/answers.ts";
import { fingerprintOf, publicKeyText } from "../../src/commands/keys.ts";
import { tempDir } from "../helpers/temp.ts";

const P = "outpost/v1";
const BROKER = "mqtt://127.0.0.1:1883";

function device(id: string) {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  const pub = publicKeyText(publicKey);
  return {
    id,
    pub,
    say: (topic: string, body: Record<string, unknown>) => {
      const text = signAnswer(privateKey, id, topic, JSON.stringify(body));
      return { topic, text, body: JSON.parse(text) as Record<string, unknown> };
    },
    status: (state = "online") => {
      const topic = `${P}/${id}/status`;
      const text = signAnswer(privateKey, id, topic, JSON.stringify({ state, version: "0.9.0", deviceKey: pub }));
      return { topic, text };
    },
  };
}

function trustWith(pins: KnownDevices, acceptNew = false) {
  return new AnswerTrust({ pins, broker: BROKER, prefix: P, acceptNew });
}

describe("known_devices", () => {
  it("keeps comments where they were, one line a device, and a link stays a link", () => {
    const dir = tempDir("outpost-known-");
    const real = join(dir, "shared-pins");
    const a = device("pi-1");
    const b = device("pi-2");
    writeFileSync(real, `# line 3 of plant 2\n${brokerId(BROKER)} ${P} pi-1 ${a.pub}  # by ops\n`);
    symlinkSync(real, join(dir, "known_devices"));
    const pins = KnownDevices.load(join(dir, "known_devices"));
    assert.equal(pins.find("127.0.0.1:1883", P, "pi-1")?.key, a.pub);
    pins.pin({ broker: "*", prefix: P, device: "pi-2", key: b.pub });
    pins.save();
    assert.ok(lstatSync(join(dir, "known_devices")).isSymbolicLink());
    const lines = readFileSync(real, "utf8").trim().split("\n");
    assert.deepEqual(lines.slice(-3), [
      "# line 3 of plant 2",
      `127.0.0.1:1883 ${P} pi-1 ${a.pub}  # by ops`,
      `* ${P} pi-2 ${b.pub}`,
    ]);
    const again = KnownDevices.load(join(dir, "known_devices"));
    assert.equal(again.find("10.0.0.9:8883", P, "pi-2")?.key, b.pub, "* matches any broker");
    assert.equal(again.find("10.0.0.9:8883", P, "pi-1"), undefined, "a pin is for its broker");
    assert.equal(again.forget("127.0.0.1:1883", P, "pi-1"), 1);
  });

  it("with a list of brokers (the nodes of one cluster), a pin made through any of them holds, whichever is first", () => {
    const dir = tempDir("outpost-known-");
    const a = device("pi-1");
    writeFileSync(join(dir, "k"), `10.0.0.2:1883 ${P} pi-1 ${a.pub}\n10.0.0.2:1883 ${P} pi-2 ${a.pub}\n`);
    const pins = KnownDevices.load(join(dir, "k"));
    const t = new AnswerTrust({
      pins,
      broker: "mqtt://10.0.0.1:1883",
      failover: ["mqtt://10.0.0.2:1883"],
      prefix: P,
      acceptNew: false,
    });
    assert.equal(t.pinOf("pi-1")?.key, a.pub);
    const s = a.status();
    t.sawStatus("pi-1", s.topic, s.text);
    assert.equal(t.status("pi-1")?.verdict.trust, "verified");
    // Alone, the first broker has no pin for it: pins stay per fleet.
    assert.equal(trustWith(pins).pinOf("pi-1"), undefined);
    assert.deepEqual(brokerIds("mqtt://10.0.0.1", ["mqtt://10.0.0.2:1883", "mqtt://10.0.0.1:1883"]), [
      "10.0.0.1:1883",
      "10.0.0.2:1883",
    ]);
  });

  it("a line that is not a pin names its number; a missing file holds none", () => {
    const dir = tempDir("outpost-known-");
    writeFileSync(join(dir, "k"), `# ok\n${brokerId(BROKER)} ${P} pi-1 ed25519:nope\n`);
    assert.throws(() => KnownDevices.load(join(dir, "k")), /k:2: pi-1: /);
    assert.equal(KnownDevices.load(join(dir, "absent")).all().length, 0);
    assert.equal(brokerId("mqtts://Broker.Example"), "broker.example:8883");
  });
});

describe("answer trust", () => {
  const pi = device("pi-1");
  const topic = `${P}/pi-1/cmd/ping/reply`;
  const expected = { id: "r-1", request: requestDigest("the request") };
  const reply = (more: Record<string, unknown> = {}) =>
    pi.say(topic, {
      session: "s-1",
      seq: 3,
      id: "r-1",
      request: expected.request,
      device: "pi-1",
      state: "succeeded",
      ...more,
    });
  const pinned = () => {
    const pins = KnownDevices.load(join(tempDir("outpost-known-"), "known_devices"));
    pins.pin({ broker: brokerId(BROKER), prefix: P, device: "pi-1", key: pi.pub });
    return pins;
  };

  it("counts an answer the pinned key signed for this request; a resend is a duplicate", () => {
    const t = trustWith(pinned());
    const r = reply();
    assert.deepEqual(t.check("pi-1", r.topic, r.text, r.body, expected), { trust: "verified" });
    assert.deepEqual(t.check("pi-1", r.topic, r.text, r.body, expected), { trust: "duplicate" });
  });

  it("an unpinned device is unverified, and names the fingerprint its status offers", () => {
    const t = trustWith(KnownDevices.none());
    const s = pi.status();
    t.sawStatus("pi-1", s.topic, s.text);
    const r = reply();
    const v = t.check("pi-1", r.topic, r.text, r.body, expected);
    assert.equal(v.trust, "unpinned");
    assert.match("why" in v ? v.why : "", new RegExp(`ctl trust pi-1 ${fingerprintOf(pi.pub).replace(/[+/]/g, ".")}`));
  });

  it("no signature: unsigned, with the version, pinned or not", () => {
    const t = trustWith(pinned());
    const text = JSON.stringify({ id: "r-1", device: "pi-1", state: "succeeded", version: "0.4.0" });
    const v = t.check("pi-1", topic, text, JSON.parse(text), expected);
    assert.deepEqual(v, {
      trust: "unsigned",
      why: "unsigned (version 0.4.0): an agent before signed answers, or not the device",
    });
  });

  it("another key, an altered byte, another topic: forged", () => {
    const t = trustWith(pinned());
    const other = device("pi-1").say(topic, { id: "r-1", request: expected.request, state: "succeeded" });
    assert.equal(t.check("pi-1", topic, other.text, other.body, expected).trust, "forged");
    const r = reply();
    const altered = r.text.replace('"succeeded"', '"succeedeD"');
    assert.equal(t.check("pi-1", topic, altered, JSON.parse(altered), expected).trust, "forged");
    assert.equal(t.check("pi-1", `${P}/pi-2/cmd/ping/reply`, r.text, r.body, expected).trust, "forged");
    assert.equal(t.check("pi-2", topic, r.text, r.body, expected).trust, "unpinned", "another device's id");
  });

  it("a genuine answer to another request is a replay", () => {
    const t = trustWith(pinned());
    const old = reply({ request: requestDigest("an older request") });
    const v = t.check("pi-1", topic, old.text, old.body, expected);
    assert.equal(v.trust, "forged");
    assert.match("why" in v ? v.why : "", /replayed/);
    // The device's own word about another request (an update outcome it republishes at each start) is not
    // this run's: neither counted nor refused.
    const otherId = reply({ id: "r-0" });
    assert.equal(t.check("pi-1", topic, otherId.text, otherId.body, expected).trust, "other");
  });

  it("the device's refusal of a copy of this request published elsewhere is not its answer (review of 0710526)", () => {
    const t = trustWith(pinned());
    const at = { ...expected, requestTopic: `${P}/pi-1/cmd/ping`, command: "ping" };
    const copy = reply({
      requestTopic: `${P}/pi-1/cmd/describe`,
      command: "describe",
      state: "failed",
      error: { code: "BAD_REQUEST", message: "signed for ping, published on the describe topic" },
    });
    const v = t.check("pi-1", topic, copy.text, copy.body, at);
    assert.equal(v.trust, "forged");
    assert.match("why" in v ? v.why : "", /a copy of this request published on outpost\/v1\/pi-1\/cmd\/describe/);
    const own = reply({ requestTopic: `${P}/pi-1/cmd/ping`, command: "ping", seq: 9 });
    assert.equal(t.check("pi-1", topic, own.text, own.body, at).trust, "verified");
  });

  it("a seq that goes backwards within a session is refused; a new session starts again", () => {
    const t = trustWith(pinned());
    const at = (seq: number, session = "s-1") => {
      const r = reply({ seq, session, state: "executing", progress: seq });
      return t.check("pi-1", topic, r.text, r.body, expected).trust;
    };
    assert.equal(at(5), "verified");
    assert.equal(at(7), "verified");
    assert.equal(at(6), "forged");
    assert.equal(at(7), "duplicate");
    assert.equal(at(1, "s-2"), "verified");
    // A session the device has left is old news, whatever its seq (review of 0710526: it reset the order).
    assert.equal(at(8, "s-1"), "other");
    assert.equal(at(2, "s-2"), "verified");
  });

  it("a changed key is said loudly, with the way out", () => {
    const t = trustWith(pinned());
    const reinstalled = device("pi-1");
    const s = reinstalled.status();
    t.sawStatus("pi-1", s.topic, s.text);
    const r = reinstalled.say(topic, { id: "r-1", request: expected.request, state: "succeeded" });
    const v = t.check("pi-1", topic, r.text, r.body, expected);
    assert.equal(v.trust, "forged");
    assert.match("why" in v ? v.why : "", /THE KEY OF pi-1 HAS CHANGED.*ctl forget pi-1/);
  });

  it("--accept-new pins a new device from its signed status, never over a pin", () => {
    const file = join(tempDir("outpost-known-"), "known_devices");
    const t = trustWith(KnownDevices.load(file), true);
    const s = pi.status();
    t.sawStatus("pi-1", s.topic, s.text);
    const r = reply();
    assert.equal(t.check("pi-1", topic, r.text, r.body, expected).trust, "verified");
    assert.equal(KnownDevices.load(file).find(brokerId(BROKER), P, "pi-1")?.key, pi.pub, "saved");

    // A status whose key did not sign it is not accepted; nor is a different key once one is pinned.
    const forger = device("pi-2");
    const t2 = trustWith(KnownDevices.load(file), true);
    const fake = forger.status();
    t2.sawStatus("pi-2", fake.topic, fake.text.replace('"online"', '"onlinE"'));
    const fr = forger.say(`${P}/pi-2/cmd/ping/reply`, { id: "r-1", request: expected.request });
    assert.equal(t2.check("pi-2", fr.topic, fr.text, fr.body, expected).trust, "unpinned");
    const impostor = device("pi-1");
    const is = impostor.status();
    t2.sawStatus("pi-1", is.topic, is.text);
    const ir = impostor.say(topic, { id: "r-1", request: expected.request });
    assert.equal(t2.check("pi-1", topic, ir.text, ir.body, expected).trust, "forged");
    assert.equal(KnownDevices.load(file).find(brokerId(BROKER), P, "pi-1")?.key, pi.pub, "the pin unchanged");
  });
});
