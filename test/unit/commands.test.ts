import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { pino } from "pino";
import { z } from "zod";
import { allows, defineCommand } from "../../src/commands/commands.ts";
import { signedBytes, verifyEnvelope } from "../../src/commands/envelope.ts";
import { parsePublicKey } from "../../src/commands/keys.ts";
import { ReplayGuard } from "../../src/commands/replay.ts";
import { CTL_REPLY, DEVICE, harness, operatorKey, PREFIX, request, sign, T0 } from "../helpers/commands.ts";

const states = (h: ReturnType<typeof harness>) => h.replies.map((r) => r.body.state);
const lastError = (h: ReturnType<typeof harness>) => h.replies.at(-1)?.body.error?.code;

describe("signed commands", () => {
  test("a valid request is accepted, runs once and succeeds, on the fallback reply topic", async () => {
    const h = harness();
    const req = request({ command: "probe", params: { n: 1 } });
    h.deliver("probe", sign(h.ops, req));
    await h.settle();
    assert.deepEqual(states(h), ["accepted", "succeeded"]);
    assert.deepEqual(h.effects, [{ n: 1 }]);
    assert.equal(h.replies[1]?.topic, `${PREFIX}/${DEVICE}/cmd/probe/reply`);
    assert.equal(h.replies[1]?.body.id, req.id);
    assert.deepEqual(h.replies[1]?.body.result, { done: true });
  });

  test("replies go to the MQTT 5 response topic with the correlation data, but only under the prefix", async () => {
    const h = harness();
    const correlationData = Buffer.from("c-1");
    h.deliver("probe", sign(h.ops, request({ command: "probe" })), {
      properties: { responseTopic: `${PREFIX}/${DEVICE}/reply/x`, correlationData },
    });
    const stray = request({ command: "probe" });
    h.deliver("probe", sign(h.ops, stray), { properties: { responseTopic: "elsewhere/steal" } });
    await h.settle();
    const [first, second] = [0, 1].map((i) => h.replies.filter((r) => (r.body.id === stray.id) === (i === 1)));
    assert.deepEqual(
      first?.map((r) => r.topic),
      [`${PREFIX}/${DEVICE}/reply/x`, `${PREFIX}/${DEVICE}/reply/x`],
    );
    assert.equal(first?.[0]?.properties?.correlationData, correlationData);
    assert.deepEqual(
      second?.map((r) => r.topic),
      Array(2).fill(`${PREFIX}/${DEVICE}/cmd/probe/reply`),
    );
  });

  test("a long command reports executing progress before its result", async () => {
    const h = harness();
    h.deliver("slow", sign(h.ops, request({ command: "slow" })));
    await h.settle();
    assert.deepEqual(states(h), ["accepted", "executing", "succeeded"]);
    assert.deepEqual(h.replies[1]?.body.progress, { step: 1 });
  });

  // Each case: what is published, and the code it must be refused with. Nothing may run in any of them.
  const cases: [string, (h: ReturnType<typeof harness>) => void, string][] = [
    ["not JSON", (h) => h.deliver("probe", "{nope"), "BAD_REQUEST"],
    ["unsigned while allowUnsigned is false", (h) => h.deliver("probe", { id: "u-1" }), "COMMAND_UNSIGNED"],
    [
      "signed by a key the device does not trust",
      (h) => h.deliver("probe", sign(operatorKey(), request({ command: "probe" }))),
      "KEY_UNKNOWN",
    ],
    [
      "a trusted key named, another key signing",
      (h) => {
        const req = request({ command: "probe" });
        h.deliver("probe", { ...sign(operatorKey(), req), key: h.ops.publicText });
      },
      "SIGNATURE_INVALID",
    ],
    [
      "a valid signature over a changed params object",
      (h) => {
        const envelope = sign(h.ops, request({ command: "probe", params: { n: 1 } }));
        h.deliver("probe", { ...envelope, payload: envelope.payload.replace('"n":1', '"n":2') });
      },
      "SIGNATURE_INVALID",
    ],
    [
      "a signature cut short",
      (h) => {
        const envelope = sign(h.ops, request({ command: "probe" }));
        h.deliver("probe", { ...envelope, sig: envelope.sig.slice(0, 20) });
      },
      "SIGNATURE_INVALID",
    ],
    [
      "signed for another device",
      (h) => h.deliver("probe", sign(h.ops, request({ command: "probe", device: "dev-2" }))),
      "WRONG_DEVICE",
    ],
    [
      "signed for a group the device is not in",
      (h) => h.deliver("probe", sign(h.ops, { ...request({ command: "probe", group: "line-9" }), device: undefined })),
      "WRONG_DEVICE",
    ],
    ["expired", (h) => h.deliver("probe", sign(h.ops, request({ command: "probe" }, T0 - 200_000))), "COMMAND_EXPIRED"],
    [
      "issued in the future beyond the skew",
      (h) => h.deliver("probe", sign(h.ops, request({ command: "probe" }, T0 + 31_000))),
      "COMMAND_NOT_YET_VALID",
    ],
    [
      "valid for longer than maxValidity",
      (h) => h.deliver("probe", sign(h.ops, { ...request({ command: "probe" }), expiresAt: T0 + 3_600_000 })),
      "BAD_REQUEST",
    ],
    [
      "signed for one command, published on another's topic",
      (h) => h.deliver("probe", sign(h.ops, request({ command: "slow" }))),
      "BAD_REQUEST",
    ],
    [
      "a command the key may not run",
      (h) => {
        h.policy.trustedKeys = [{ name: "viewer", key: h.ops.publicText, allow: ["slow", "config.*"] }];
        h.deliver("probe", sign(h.ops, request({ command: "probe" })));
      },
      "KEY_NOT_ALLOWED",
    ],
    [
      "an unknown command",
      (h) => h.deliver("format-disk", sign(h.ops, request({ command: "format-disk" }))),
      "UNKNOWN_COMMAND",
    ],
    [
      "params that do not fit",
      (h) => h.deliver("probe", sign(h.ops, request({ command: "probe", params: { n: "one" } }))),
      "BAD_PARAMS",
    ],
    [
      "an envelope with extra keys",
      (h) => h.deliver("probe", { payload: "{}", key: "k", sig: "s", x: 1 }),
      "BAD_REQUEST",
    ],
  ];
  for (const [name, act, code] of cases) {
    test(`refused with ${code}: ${name}`, async () => {
      // Refusals of requests not yet authenticated are answered only on a ctl response topic (issue 8).
      const h = harness({ responseTopic: CTL_REPLY });
      act(h);
      await h.settle();
      assert.deepEqual(states(h), ["failed"]);
      assert.equal(lastError(h), code);
      assert.deepEqual(h.effects, [], "nothing ran");
      assert.equal(h.commands.counts.executed, 0);
    });
  }

  test("a command that throws is answered with failed and the error's code", async () => {
    const h = harness();
    h.deliver("boom", sign(h.ops, request({ command: "boom" })));
    await h.settle();
    assert.deepEqual(states(h), ["accepted", "failed"]);
    assert.deepEqual(h.replies[1]?.body.error, { code: "DISK_FULL", message: "no space left" });
  });

  test("BAD_PARAMS names the path inside params", async () => {
    const h = harness();
    h.deliver("probe", sign(h.ops, request({ command: "probe", params: { n: "one" } })));
    await h.settle();
    assert.match(h.replies[0]?.body.error?.message ?? "", /^params\.n: /);
  });

  test("a request re-published as captured is refused (nonce), and a re-signed one with the same id too", async () => {
    const h = harness();
    const req = request({ command: "probe" });
    const captured = sign(h.ops, req);
    h.deliver("probe", captured);
    h.deliver("probe", captured);
    h.deliver("probe", sign(h.ops, { ...req, nonce: "f".repeat(32) }));
    await h.settle();
    assert.deepEqual(states(h), ["accepted", "failed", "failed", "succeeded"]);
    assert.deepEqual(
      h.replies.filter((r) => r.body.state === "failed").map((r) => r.body.error?.code),
      ["NONCE_REPLAYED", "REQUEST_REPLAYED"],
    );
    assert.equal(h.effects.length, 1);
  });

  test("ids and nonces are remembered across a restart, and forgotten once expired", async () => {
    const first = harness();
    const req = request({ command: "probe" });
    const captured = sign(first.ops, req);
    first.deliver("probe", captured);
    await first.settle();
    first.replay.close();

    const again = harness({ dir: first.dir });
    again.policy.trustedKeys = first.policy.trustedKeys;
    again.deliver("probe", captured);
    await again.settle();
    assert.equal(lastError(again), "NONCE_REPLAYED");
    assert.deepEqual(again.effects, []);

    const later = new ReplayGuard({ dir: first.dir, logger: pino({ level: "silent" }), now: T0 + 200_000 });
    assert.equal(later.size, 0, "expired entries are dropped on open");
    later.close();
  });

  test("a command that changes nothing is remembered in memory only: refused again in this run, not after a restart (issue 27)", async () => {
    const first = harness();
    const captured = sign(first.ops, request({ command: "look" }));
    first.deliver("look", captured);
    await first.settle();
    first.deliver("look", captured);
    await first.settle();
    assert.equal(lastError(first), "NONCE_REPLAYED");
    assert.deepEqual(first.effects, ["look"]);
    first.replay.close();
    // No fsynced record was written for it: after a restart the captured copy is answered once more.
    const again = harness({ dir: first.dir });
    again.policy.trustedKeys = first.policy.trustedKeys;
    again.deliver("look", captured);
    await again.settle();
    assert.deepEqual(again.effects, ["look"]);
  });

  test("a group member runs a request signed for its group", async () => {
    const h = harness({ groups: ["line-3"] });
    const req = { ...request({ command: "probe", group: "line-3" }), device: undefined };
    h.deliver("probe", sign(h.ops, req), {}, `${PREFIX}/_group/line-3/cmd/probe`);
    await h.settle();
    assert.deepEqual(states(h), ["accepted", "succeeded"]);
    assert.deepEqual(h.bus.topics, [
      `${PREFIX}/${DEVICE}/cmd/+`,
      `${PREFIX}/_group/line-3/cmd/+`,
      `${PREFIX}/_group/_all/cmd/+`,
    ]);
  });

  test("unsigned requests run only with allowUnsigned, and at most once per id", async () => {
    const h = harness({ policy: { allowUnsigned: true } });
    h.deliver("probe", { id: "u-1", params: { n: 3 } });
    h.deliver("probe", { id: "u-1", params: { n: 3 } });
    await h.settle();
    assert.deepEqual(states(h), ["accepted", "failed", "succeeded"]);
    assert.equal(lastError(h), undefined);
    assert.deepEqual(h.effects, [{ n: 3 }]);
  });
});

describe("brokers that turn '.' into a level separator (issue 26, part C: RabbitMQ 3.10)", () => {
  const dotted = defineCommand({ name: "look.more", params: z.undefined(), changesState: false, run: () => "more" });

  test("a command name travels flat (look_more) or dotted; the reply goes back under the level it came on", async () => {
    const h = harness();
    h.commands.register([dotted]);
    h.deliver("look_more", sign(h.ops, request({ command: "look.more" })));
    h.deliver("look.more", sign(h.ops, request({ command: "look.more" })));
    await h.settle();
    assert.deepEqual(
      h.replies.filter((r) => r.body.state === "succeeded").map((r) => [r.topic, r.body.command, r.body.result]),
      [
        [`${PREFIX}/${DEVICE}/cmd/look_more/reply`, "look.more", "more"],
        [`${PREFIX}/${DEVICE}/cmd/look.more/reply`, "look.more", "more"],
      ],
    );
    // Signed for another command, published on this one's flat topic: refused as on the dotted one.
    h.deliver("look_more", sign(h.ops, request({ command: "look" })));
    await h.settle();
    assert.equal(lastError(h), "BAD_REQUEST");
  });

  test("every device answers the _all group, but only ping and describe", async () => {
    const h = harness({ groups: ["line-3"] });
    const ping = defineCommand({ name: "ping", params: z.undefined(), changesState: false, run: () => "pong" });
    h.commands.register([ping]);
    const all = (command: string) => ({ ...request({ command, group: "_all" }), device: undefined });
    h.deliver("ping", sign(h.ops, all("ping")), {}, `${PREFIX}/_group/_all/cmd/ping`);
    await h.settle();
    assert.deepEqual(states(h), ["accepted", "succeeded"]);
    // One signature must not change every device at once: on the broadcast topic, or on the device's own. Nor
    // may a command that changes nothing but holds the device (debug.block) reach the whole fleet: "look"
    // stands for it.
    h.deliver("probe", sign(h.ops, all("probe")), {}, `${PREFIX}/_group/_all/cmd/probe`);
    h.deliver("probe", sign(h.ops, all("probe")));
    h.deliver("probe", sign(h.ops, { ...request({ command: "probe" }) }), {}, `${PREFIX}/_group/_all/cmd/probe`);
    h.deliver("look", sign(h.ops, all("look")), {}, `${PREFIX}/_group/_all/cmd/look`);
    await h.settle();
    assert.deepEqual(h.effects, []);
    assert.deepEqual(
      h.replies.slice(2).map((r) => r.body.error?.code),
      ["BAD_REQUEST", "BAD_REQUEST", "BAD_REQUEST", "BAD_REQUEST"],
    );
  });

  test("a group with a dot, its commands delivered with the dot turned into a level: the log says why, once", async () => {
    const h = harness({ groups: ["line.3"] });
    const req = { ...request({ command: "look", group: "line.3" }), device: undefined };
    for (let i = 0; i < 3; i++) h.deliver("look", sign(h.ops, req), {}, `${PREFIX}/_group/line/3/cmd/look`);
    await h.settle();
    assert.deepEqual(h.replies, []);
    const said = h.logs.filter((l) => String(l.msg).includes("level separator"));
    assert.equal(said.length, 1);
    assert.equal(said[0]?.delivered, `${PREFIX}/_group/line/3/cmd/look`);
  });
});

describe("envelope and keys", () => {
  test("the signed bytes are the context line followed by the payload, verifiable with the .pub text", () => {
    const ops = operatorKey();
    const envelope = sign(ops, request({ command: "ping" }));
    assert.equal(signedBytes(envelope.payload).toString(), `outpost-command-v1\n${envelope.payload}`);
    assert.equal(verifyEnvelope(envelope, parsePublicKey(ops.publicText)), true);
    assert.equal(
      verifyEnvelope({ ...envelope, payload: `${envelope.payload} ` }, parsePublicKey(ops.publicText)),
      false,
    );
  });

  test("public keys are read from the .pub text, bare base64 or PEM, and nothing else", () => {
    const ops = operatorKey();
    const pem = parsePublicKey(ops.publicText).export({ format: "pem", type: "spki" }).toString();
    for (const text of [ops.publicText, ops.publicText.slice("ed25519:".length), pem]) {
      assert.equal(parsePublicKey(text).asymmetricKeyType, "ed25519");
    }
    for (const text of ["ed25519:abc", "", `ed25519:${"A".repeat(60)}`]) {
      assert.throws(() => parsePublicKey(text), { code: "KEY_INVALID" });
    }
  });

  test("allow patterns: *, a family, one command", () => {
    assert.equal(allows(["*"], "restart"), true);
    assert.equal(allows(["config.*"], "config.set"), true);
    assert.equal(allows(["config.*"], "configure"), false);
    assert.equal(allows(["ping"], "ping"), true);
    assert.equal(allows(["ping"], "restart"), false);
    assert.equal(allows([], "ping"), false);
  });
});
