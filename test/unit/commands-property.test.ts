import assert from "node:assert/strict";
import { test } from "node:test";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import fc from "fast-check";
import { REJECTIONS } from "../../src/commands/commands.ts";
import { CTL_REPLY, harness, request, sign } from "../helpers/commands.ts";

setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;

const NAMES = ["probe", "slow", "boom", "ping", "PROBE", "a/b", "", "x".repeat(70)];

/** A valid envelope, then changed in one place: a character, a field dropped, added or retyped. */
const mutatedEnvelope = fc
  .record({
    params: fc.option(fc.record({ n: fc.integer() }), { nil: undefined }),
    field: fc.constantFrom("payload", "key", "sig"),
    at: fc.nat(),
    char: fc.string({ minLength: 1, maxLength: 1 }),
    how: fc.constantFrom("char", "drop", "retype", "extra", "truncate"),
    other: fc.jsonValue(),
  })
  .map((m) => ({ ...m, kind: "mutated" as const }));

const junk = fc.oneof(
  fc.uint8Array({ maxLength: 300 }).map((bytes) => ({ kind: "bytes" as const, bytes })),
  fc.jsonValue().map((value) => ({ kind: "json" as const, value })),
  fc
    .record({ payload: fc.oneof(fc.string(), fc.jsonValue()), key: fc.jsonValue(), sig: fc.string() })
    .map((value) => ({ kind: "json" as const, value })),
);

test("random and mutated envelopes: never a crash, always an error code, nothing runs, memory bounded", () => {
  // Unauthenticated refusals are answered only on a ctl response topic, and only within the refusal budget:
  // the clock moves on by the budget's refill time before each request.
  const h = harness({ responseTopic: CTL_REPLY });
  const validCodes = new Set<string>(REJECTIONS);
  let heapAfterWarmup = 0;
  let runs = 0;
  fc.assert(
    fc.property(fc.oneof(mutatedEnvelope, junk), fc.constantFrom(...NAMES), (input, name) => {
      h.replies.length = 0;
      h.clock.advance(500);
      let payload: Buffer;
      if (input.kind === "bytes") {
        payload = Buffer.from(input.bytes);
      } else if (input.kind === "json") {
        payload = Buffer.from(JSON.stringify(input.value) ?? "null");
      } else {
        const original = sign(h.ops, request({ command: "probe", params: input.params }, h.clock.now()));
        const envelope: Record<string, unknown> = { ...original };
        const text = original[input.field];
        const i = input.at % Math.max(1, text.length);
        if (input.how === "char") {
          fc.pre(text[i] !== input.char);
          envelope[input.field] = text.slice(0, i) + input.char + text.slice(i + 1);
        } else if (input.how === "drop") delete envelope[input.field];
        else if (input.how === "retype") envelope[input.field] = input.other;
        else if (input.how === "extra") envelope.extra = input.other;
        else envelope[input.field] = text.slice(0, i);
        fc.pre(JSON.stringify(envelope) !== JSON.stringify(original));
        payload = Buffer.from(JSON.stringify(envelope));
      }
      const packet = { properties: { responseTopic: CTL_REPLY } } as never;
      assert.doesNotThrow(() => h.bus.emit("message", `outpost/v1/dev-1/cmd/${name}`, payload, packet));
      // Wrong names (with a slash, upper case, too long) still reach a handler in these tests, since the
      // bus does not match topics: every one must still get exactly one answer.
      assert.equal(h.replies.length, 1, "exactly one reply");
      const reply = h.replies[0]?.body;
      assert.equal(reply?.state, "failed");
      assert.ok(validCodes.has(reply?.error?.code ?? ""), `known code, got ${reply?.error?.code}`);
      runs += 1;
      if (runs === 500) {
        gc();
        heapAfterWarmup = process.memoryUsage().heapUsed;
      }
    }),
    { numRuns: 4000, seed: 42 },
  );
  assert.deepEqual(h.effects, [], "nothing ran");
  assert.equal(h.replay.size, 0, "nothing remembered for refused requests");
  gc();
  const growth = process.memoryUsage().heapUsed - heapAfterWarmup;
  assert.ok(growth < 8 * 1024 * 1024, `heap grew ${(growth / 1048576).toFixed(1)} MiB over 3,500 requests`);
});
