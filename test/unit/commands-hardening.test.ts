// Regression tests for issue 8 (hardening), items 5, 6, 7 and 10. Each failed on bbb3be8, the commit before
// the fix (see the note of each test).

import assert from "node:assert/strict";
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { CTL_REPLY, DEVICE, harness, PREFIX, request, sign } from "../helpers/commands.ts";
import { tempDir } from "../helpers/temp.ts";

const codes = (h: ReturnType<typeof harness>) => h.replies.map((r) => r.body.error?.code ?? r.body.state);

describe("commands: response topics (item 6)", () => {
  // bbb3be8 answered on any topic under the prefix: another device's telemetry, a group's command topic, or
  // its own command topic (handling the request twice).
  // Issue 25: a response topic in the operators' old namespace P/_ctl/, another device's reply namespace, or the
  // bare namespace is not the device's own either (a per-device ACL lets a device write only under P/D/).
  for (const hijack of [
    `${PREFIX}/dev9/telemetry`,
    `${PREFIX}/_group/g1/cmd/ping`,
    `${PREFIX}/${DEVICE}/cmd/probe`,
    `${PREFIX}/_ctl/x/reply`,
    `${PREFIX}/dev9/reply/x`,
    `${PREFIX}/${DEVICE}/reply/`,
    `${PREFIX}/${DEVICE}x/reply/x`,
  ]) {
    test(`a response topic outside ${PREFIX}/${DEVICE}/reply/ is never published to: ${hijack}`, async () => {
      const h = harness();
      const packet = { properties: { responseTopic: hijack } };
      h.deliver("probe", sign(h.ops, request({ command: "probe" })), packet);
      h.deliver("probe", { id: "unsigned-1" }, packet);
      h.deliver("probe", "{not json", packet);
      await h.settle();
      assert.deepEqual(
        h.replies.filter((r) => r.topic === hijack),
        [],
      );
      // The signed one is answered on the device's own reply topic; the unauthenticated ones not at all.
      assert.deepEqual(
        h.replies.map((r) => [r.topic, r.body.state]),
        [
          [`${PREFIX}/${DEVICE}/cmd/probe/reply`, "accepted"],
          [`${PREFIX}/${DEVICE}/cmd/probe/reply`, "succeeded"],
        ],
      );
    });
  }

  test("a deferred final reply kept by an older agent for P/_ctl/ goes to the device's own reply topic", async () => {
    // Review of issue 25: the restart record named P/_ctl/...; after the upgrade the reply went there, where a
    // per-device ACL refuses it, and the outbox dropped it.
    const h = harness();
    h.commands.finish(
      { id: "r-1", command: "restart", topic: `${PREFIX}/_ctl/old/reply`, request: "d" },
      { state: "succeeded", result: { restarted: true } },
    );
    h.commands.finish(
      { id: "r-2", command: "restart", topic: `${PREFIX}/${DEVICE}/reply/ctl-1`, request: "d" },
      { state: "succeeded", result: { restarted: true } },
    );
    await h.settle();
    assert.deepEqual(
      h.replies.map((r) => [r.body.id, r.topic]),
      [
        ["r-1", `${PREFIX}/${DEVICE}/cmd/restart/reply`],
        ["r-2", `${PREFIX}/${DEVICE}/reply/ctl-1`],
      ],
    );
  });

  test("refusals of unauthenticated requests go only to a ctl response topic", async () => {
    const h = harness();
    h.deliver("probe", { id: "u-1" });
    h.deliver("probe", { id: "u-2" }, { properties: { responseTopic: CTL_REPLY } });
    h.deliver("probe", { id: "u-3" }, { properties: { responseTopic: `${PREFIX}/${DEVICE}/reply/+` } });
    await h.settle();
    assert.deepEqual(
      h.replies.map((r) => [r.topic, r.body.id, r.body.error?.code]),
      [[CTL_REPLY, "u-2", "COMMAND_UNSIGNED"]],
    );
    assert.equal(h.commands.counts.refused, 3);
  });
});

describe("commands: refusals are rate-limited (item 7)", () => {
  // bbb3be8: 10,000 unsigned requests gave 10,000 warn lines and 10,000 replies.
  test("10,000 unsigned requests: every one counted, a bounded number of replies and log lines", async () => {
    const h = harness({ responseTopic: CTL_REPLY });
    for (let i = 0; i < 10_000; i++) h.deliver("probe", { id: `flood-${i}` });
    await h.settle();
    const warned = h.logs.filter((l) => l.msg === "command refused");
    assert.equal(h.commands.counts.refused, 10_000);
    assert.ok(h.replies.length <= 30, `${h.replies.length} replies`);
    assert.ok(warned.length <= 30, `${warned.length} log lines`);
    assert.equal(h.commands.counts.suppressed, 10_000 - h.replies.length);
    // Time refills the budget: the next refusal is answered and its log line says how many went unreported.
    h.clock.advance(60_000);
    h.deliver("probe", { id: "after" });
    await h.settle();
    assert.equal(h.replies.at(-1)?.body.id, "after");
    const last = h.logs.filter((l) => l.msg === "command refused").at(-1);
    assert.equal(last?.suppressed, h.commands.counts.suppressed);
  });

  test("a flood does not keep a valid request from running", async () => {
    const h = harness({ responseTopic: CTL_REPLY });
    for (let i = 0; i < 2000; i++) h.deliver("probe", { id: `flood-${i}` });
    h.deliver("probe", sign(h.ops, request({ command: "probe", params: { n: 7 } })));
    await h.settle();
    assert.deepEqual(h.effects, [{ n: 7 }]);
    assert.deepEqual(codes(h).slice(-2), ["accepted", "succeeded"]);
  });
});

describe("commands: queued, not BUSY (item 10)", () => {
  // bbb3be8: of six valid requests back to back, two got BUSY.
  test("ten valid requests back to back all run", async () => {
    const h = harness();
    for (let i = 0; i < 10; i++) h.deliver("slow", sign(h.ops, request({ command: "slow" })));
    for (let i = 0; i < 5; i++) await h.settle();
    assert.equal(h.effects.length, 10);
    assert.equal(h.replies.filter((r) => r.body.state === "succeeded").length, 10);
    assert.deepEqual(
      h.replies.filter((r) => r.body.state === "failed"),
      [],
    );
  });

  test("BUSY only once the bounded queue is full; the queued ones run as others finish", async () => {
    const h = harness();
    // 4 run, 64 wait, the 69th is refused.
    for (let i = 0; i < 69; i++) h.deliver("block", sign(h.ops, request({ command: "block" })));
    await h.settle();
    assert.deepEqual(
      h.replies.filter((r) => r.body.state === "failed").map((r) => r.body.error?.code),
      ["BUSY"],
    );
    assert.equal(h.replies.filter((r) => r.body.state === "accepted").length, 68);
    while (h.effects.length < 68) {
      h.release();
      await h.settle();
    }
    assert.equal(h.replies.filter((r) => r.body.state === "succeeded").length, 68);
  });

  test("requests still queued at stop are answered with COMMAND_ABORTED and never run", async () => {
    const h = harness();
    for (let i = 0; i < 6; i++) h.deliver("block", sign(h.ops, request({ command: "block" })));
    await h.settle();
    const stopped = h.commands.stop();
    h.release();
    await stopped;
    assert.equal(h.effects.length, 4);
    assert.deepEqual(
      h.replies.filter((r) => r.body.state === "failed").map((r) => r.body.error?.code),
      ["COMMAND_ABORTED", "COMMAND_ABORTED"],
    );
  });
});

describe("commands: fail closed without durable replay records (item 5)", () => {
  // bbb3be8 fell back to memory with a log line, so a captured request could run again after each restart.
  test("state-changing commands are refused while commands.db cannot be opened; read-only ones run", async () => {
    const dir = tempDir("outpost-cmd-closed-");
    mkdirSync(join(dir, "commands.db")); // a directory where the database should be
    const h = harness({ dir });
    assert.equal(h.replay.durable, false);
    h.deliver("probe", sign(h.ops, request({ command: "probe" })));
    h.deliver("look", sign(h.ops, request({ command: "look" })));
    await h.settle();
    assert.deepEqual(codes(h), ["REPLAY_STORE_UNAVAILABLE", "accepted", "succeeded"]);
    assert.deepEqual(h.effects, ["look"]);
  });

  test("the store is retried: once it can be written again, state-changing commands run and listeners hear it", async () => {
    const dir = tempDir("outpost-cmd-retry-");
    mkdirSync(join(dir, "commands.db"));
    const h = harness({ dir });
    const heard: boolean[] = [];
    h.replay.onDurabilityChange((durable) => heard.push(durable));
    h.deliver("probe", sign(h.ops, request({ command: "probe" })));
    await h.settle();
    rmSync(join(dir, "commands.db"), { recursive: true });
    h.clock.advance(10_000);
    h.deliver("probe", sign(h.ops, request({ command: "probe" }, h.clock.now())));
    await h.settle();
    assert.deepEqual(codes(h), ["REPLAY_STORE_UNAVAILABLE", "accepted", "succeeded"]);
    assert.equal(h.replay.durable, true);
    assert.deepEqual(heard, [true]);
  });

  test("a restart request captured and re-published after every restart runs at most once", async () => {
    const dir = tempDir("outpost-cmd-restart-");
    const first = harness({ dir });
    const captured = sign(first.ops, request({ command: "probe" }));
    first.deliver("probe", captured);
    await first.settle();
    first.replay.close();
    for (let restart = 0; restart < 3; restart++) {
      const again = harness({ dir });
      again.policy.trustedKeys = first.policy.trustedKeys;
      again.deliver("probe", captured);
      await again.settle();
      assert.deepEqual(codes(again), ["NONCE_REPLAYED"], `restart ${restart + 1}`);
      again.replay.close();
    }
    assert.equal(first.effects.length, 1);
  });
});

describe("commands: params (item 9)", () => {
  // bbb3be8 answered a __proto__ patch with ok:true and changed:[].
  test("a key that would reach an object's prototype is refused with BAD_PARAMS naming it", async () => {
    const h = harness();
    for (const params of ['{"__proto__":{"n":1}}', '{"n":1,"constructor":{"prototype":{"x":1}}}']) {
      const req = { ...request({ command: "probe" }), params: JSON.parse(params) as unknown };
      h.deliver("probe", sign(h.ops, req));
    }
    await h.settle();
    assert.deepEqual(codes(h), ["BAD_PARAMS", "BAD_PARAMS"]);
    assert.match(h.replies[0]?.body.error?.message ?? "", /^params\.__proto__: /);
    assert.match(h.replies[1]?.body.error?.message ?? "", /^params\.constructor: /);
    assert.deepEqual(h.effects, []);
  });
});
