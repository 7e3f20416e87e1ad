// Issue 13 groundwork: what an update is checked against before anything is downloaded.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { checkRelease, compareVersions } from "../../src/ota/checks.ts";
import type { Manifest } from "../../src/ota/manifest.ts";
import { outcome } from "../helpers/outcome.ts";

const manifest = (over: Partial<Manifest> = {}): Manifest => ({
  format: 1,
  kind: "agent",
  artifact: "outpost-0.2.0-linux-arm64",
  version: "0.2.0",
  target: { os: "linux", arch: "arm64" },
  sha256: "0".repeat(64),
  size: 100 * 1024 * 1024,
  index: { sha256: "1".repeat(64), size: 1000 },
  allowDowngrade: false,
  created: 0,
  ...over,
});
const device = { version: "0.1.0", arch: "arm64", freeBytes: 1024 ** 3, maxSize: 512 * 1024 ** 2 };

describe("update checks", () => {
  it("semver precedence, pre-releases included", () => {
    const ordered = [
      "0.1.0-alpha",
      "0.1.0-alpha.1",
      "0.1.0-alpha.beta",
      "0.1.0-beta.2",
      "0.1.0-beta.11",
      "0.1.0-rc.1",
      "0.1.0",
      "0.1.1",
      "0.2.0",
      "1.0.0",
      "10.0.0",
    ];
    for (let i = 0; i < ordered.length - 1; i++) {
      assert.ok(compareVersions(ordered[i] ?? "", ordered[i + 1] ?? "") < 0, `${ordered[i]} < ${ordered[i + 1]}`);
      assert.ok(compareVersions(ordered[i + 1] ?? "", ordered[i] ?? "") > 0);
    }
    assert.equal(compareVersions("1.2.3", "1.2.3"), 0);
  });

  it("semver.org's ordered list, identifiers with hyphens, huge numbers, build metadata (issue 22, item 8)", () => {
    const ordered = [
      "1.0.0-0.3.7",
      "1.0.0-alpha",
      "1.0.0-alpha.1",
      "1.0.0-alpha.beta",
      "1.0.0-beta",
      "1.0.0-beta.2",
      "1.0.0-beta.11",
      // Identifiers compare in ASCII order, a prefix first: "rc" < "rc-1" < "rc-10-a" < "rc-2".
      "1.0.0-rc.1",
      "1.0.0-rc-1",
      "1.0.0-rc-10-a",
      "1.0.0-rc-2",
      "1.0.0-rc-9",
      "1.0.0-x.7.z.92",
      "1.0.0-x-y-z.--",
      "1.0.0",
      "1.0.1-90071992547409910",
      "1.0.1-90071992547409911",
      "1.0.1",
      "2.0.0",
      "2.1.0",
      "2.1.1",
    ];
    for (let i = 0; i < ordered.length; i++)
      for (let j = 0; j < ordered.length; j++) {
        const c = compareVersions(ordered[i] ?? "", ordered[j] ?? "");
        assert.equal(Math.sign(c), Math.sign(i - j), `${ordered[i]} vs ${ordered[j]}: ${c}`);
      }
    // Build metadata does not count (semver 2.0.0, item 10).
    assert.equal(compareVersions("1.0.0+build.1", "1.0.0+build-2"), 0);
    assert.equal(compareVersions("1.0.0-rc-1+x-y", "1.0.0-rc-1"), 0);
  });

  it("each refusal has its own code, and a good release passes", () => {
    assert.equal(
      outcome(() => checkRelease(manifest(), device)),
      "ok",
    );
    assert.equal(
      outcome(() => checkRelease(manifest({ kind: "model" }), device)),
      "OTA_KIND_UNSUPPORTED",
    );
    assert.equal(
      outcome(() => checkRelease(manifest({ target: { os: "linux", arch: "x64" } }), device)),
      "OTA_WRONG_ARCH",
    );
    assert.equal(
      outcome(() => checkRelease(manifest({ version: "0.1.0" }), device)),
      "OTA_DOWNGRADE",
    );
    assert.equal(
      outcome(() => checkRelease(manifest({ version: "0.0.9" }), device)),
      "OTA_DOWNGRADE",
    );
    assert.equal(
      outcome(() => checkRelease(manifest({ version: "0.0.9", allowDowngrade: true }), device)),
      "ok",
    );
    assert.equal(
      outcome(() => checkRelease(manifest({ minVersion: "0.1.1" }), device)),
      "OTA_TOO_OLD",
    );
    assert.equal(
      outcome(() => checkRelease(manifest({ size: 600 * 1024 ** 2 }), device)),
      "OTA_TOO_LARGE",
    );
    assert.equal(
      outcome(() => checkRelease(manifest(), { ...device, freeBytes: 100 * 1024 ** 2 })),
      "OTA_DISK_FULL",
    );
    assert.equal(
      outcome(() => checkRelease(manifest(), { ...device, freeBytes: 117 * 1024 ** 2 })),
      "ok",
      "the size and 16 MiB of margin",
    );
  });
});

it("update.trustedKeys takes only ed25519 public keys, and a bad one is named by its path", async () => {
  const { configSchema } = await import("../../src/schema.ts");
  const bad = configSchema.safeParse({ update: { trustedKeys: ["ed25519:AAAA", "not a key"] } });
  assert.equal(bad.success, false);
  assert.deepEqual(
    bad.error?.issues.map((i) => i.path.join(".")),
    ["update.trustedKeys.0", "update.trustedKeys.1"],
  );
  const good = configSchema.safeParse({ update: { trustedKeys: [`ed25519:${"A".repeat(43)}=`] } });
  assert.equal(good.success, true);
});
