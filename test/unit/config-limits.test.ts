// Regression tests for issue 8 (hardening), items 8 and 9 (config side). Each failed on bbb3be8: the huge file
// froze the process, and each invalid combination validated.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { requestSchema } from "../../src/commands/envelope.ts";
import { type ConfigProblem, unknownEnvVars } from "../../src/config/load.ts";
import { isOutpostError } from "../../src/core/errors.ts";
import { loadAgentConfig } from "../../src/schema.ts";

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "outpost-config-limits-"));
});
after(() => rmSync(dir, { recursive: true, force: true }));

function problems(text: string, env: Record<string, string> = {}): ConfigProblem[] {
  const path = join(dir, "config.yaml");
  writeFileSync(path, text);
  try {
    loadAgentConfig({ path, env, hostname: "h" });
  } catch (err) {
    assert.ok(isOutpostError(err, "CONFIG_INVALID"), String(err));
    return err.details as ConfigProblem[];
  }
  assert.fail("configuration was accepted");
}

describe("config limits and cross-field rules", () => {
  it("a 45 MB config file is refused at once by its size, naming the limit", () => {
    const path = join(dir, "huge.yaml");
    writeFileSync(path, `device:\n  groups: [${"gg,".repeat(15_000_000)}g]\n`);
    const started = performance.now();
    let found: ConfigProblem[] = [];
    try {
      loadAgentConfig({ path, hostname: "h" });
    } catch (err) {
      assert.ok(isOutpostError(err, "CONFIG_INVALID"));
      found = err.details as ConfigProblem[];
    }
    assert.ok(performance.now() - started < 1000, "refused without parsing");
    assert.equal(found[0]?.path, "(file)");
    assert.match(found[0]?.expected ?? "", /at most 1 MiB/);
    assert.match(found[0]?.found ?? "", /^4\d\.\d MiB/);
  });

  it("arrays are capped: groups, trusted keys, allow lists", () => {
    const groups = Array.from({ length: 1000 }, (_, i) => `g${i}`).join(",");
    const found = problems(`device:\n  groups: [${groups}]\n`);
    assert.equal(found[0]?.path, "device.groups");
    assert.match(found[0]?.expected ?? "", /at most 64/);
  });

  it("reconnectMin above reconnectMax is refused (the agent never connected)", () => {
    const found = problems("mqtt:\n  reconnectMin: 2m\n  reconnectMax: 1m\n");
    assert.equal(found[0]?.path, "mqtt.reconnectMax");
    assert.match(found[0]?.expected ?? "", /at least mqtt.reconnectMin/);
  });

  it("sizes have an upper bound", () => {
    const found = problems("outbox:\n  maxBytes: 99999999999999999999GiB\n");
    assert.equal(found[0]?.path, "outbox.maxBytes");
    assert.match(found[0]?.expected ?? "", /at most/);
  });

  it("a telemetry interval below 50ms is refused", () => {
    assert.equal(problems("telemetry:\n  interval: 10ms\n")[0]?.path, "telemetry.interval");
  });

  it("unknown OUTPOST_ variables are reported (a single underscore is a common typo), the project's own are not", () => {
    assert.deepEqual(
      unknownEnvVars({
        OUTPOST_TELEMETRY_INTERVAL: "1s",
        OUTPOST_TELEMETRY__INTERVAL: "1s",
        OUTPOST_NODE: "/x",
        OUTPOST_CTL_BROKER: "mqtt://x",
        PATH: "/bin",
      }),
      ["OUTPOST_TELEMETRY_INTERVAL"],
    );
  });

  it("a request whose expiresAt is before its issuedAt is refused", () => {
    const request = { id: "a", command: "ping", device: "d", issuedAt: 2000, expiresAt: 1000, nonce: "n".repeat(16) };
    const parsed = requestSchema.safeParse(request);
    assert.equal(parsed.success, false);
    assert.deepEqual(parsed.error?.issues[0]?.path, ["expiresAt"]);
  });
});
