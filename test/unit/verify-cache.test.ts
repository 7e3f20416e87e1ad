// Issue 27: the verifier keeps the key objects of key texts that signed a request, so that a command parses no
// key. Only texts that signed are kept: spellings of a trusted key sent with a bad signature must not fill it.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { CommandPolicy } from "../../src/commands/types.ts";
import { Verifier } from "../../src/commands/verify.ts";
import { DEVICE, operatorKey, request, sign, T0 } from "../helpers/commands.ts";

describe("the verifier's key cache", () => {
  it("keeps only key texts that signed a request; a removed key is refused at once", () => {
    const ops = operatorKey();
    const policy = (keys: string[]): CommandPolicy => ({
      trustedKeys: keys.map((key, i) => ({ name: `k${i}`, key, allow: ["*"] })),
      allowUnsigned: false,
      skewMs: 30_000,
      maxValidityMs: 600_000,
    });
    const trusting = policy([ops.publicText]);
    const verifier = new Verifier(DEVICE, []);
    const check = (envelope: unknown, p = trusting) => {
      try {
        verifier.verify(envelope, p, { name: "probe" }, T0, () => {});
        return "ok";
      } catch (err) {
        return (err as { code: string }).code;
      }
    };
    const cached = () => (verifier as unknown as { keyCache: { offered: Map<string, unknown> } }).keyCache.offered;
    // 70 spellings of the trusted key (leading spaces), each with a signature that does not match.
    for (let i = 1; i <= 70; i++) {
      const envelope = sign(ops, request({ command: "probe" }));
      assert.equal(check({ ...envelope, key: `${" ".repeat(i)}${envelope.key}`, sig: "AAAA" }), "SIGNATURE_INVALID");
    }
    assert.equal(cached().size, 0, "nothing that failed to sign is kept");
    assert.equal(check(sign(ops, request({ command: "probe" }))), "ok");
    assert.equal(check(sign(ops, request({ command: "probe" }))), "ok", "from the cache");
    assert.equal(cached().size, 1);
    // The key removed (a config.set, a reload): a new trusted-keys list, and the cached text counts for nothing.
    assert.equal(check(sign(ops, request({ command: "probe" })), policy([operatorKey().publicText])), "KEY_UNKNOWN");
  });
});
