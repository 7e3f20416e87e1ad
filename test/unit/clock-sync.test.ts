import assert from "node:assert/strict";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { CLOCK_SYNC_RECHECK_MS, clockSyncProbe } from "../../src/system/clock-sync.ts";
import { tempDir } from "../helpers/temp.ts";

test("the clock-sync marker is looked at once a second until it appears, then never again", () => {
  const run = tempDir("outpost-clock-sync-");
  let now = 0;
  const synced = clockSyncProbe(run, () => now);
  assert.equal(synced(), false);
  mkdirSync(join(run, "systemd", "timesync"), { recursive: true });
  const marker = join(run, "systemd", "timesync", "synchronized");
  writeFileSync(marker, "");
  // Within the second after a look, every message is answered from memory: no stat per message.
  now = CLOCK_SYNC_RECHECK_MS - 1;
  assert.equal(synced(), false);
  now = CLOCK_SYNC_RECHECK_MS;
  assert.equal(synced(), true);
  // Synchronised stays synchronised: the kernel keeps the clock disciplined, and the file is not looked at.
  rmSync(marker);
  now += 10 * CLOCK_SYNC_RECHECK_MS;
  assert.equal(synced(), true);
});

test("an unsynchronised clock is looked at again after each second, not only once", () => {
  const run = tempDir("outpost-clock-sync-");
  let now = 5_000;
  const synced = clockSyncProbe(run, () => now);
  for (let i = 0; i < 3; i++) {
    assert.equal(synced(), false);
    now += CLOCK_SYNC_RECHECK_MS;
  }
  mkdirSync(join(run, "systemd", "timesync"), { recursive: true });
  writeFileSync(join(run, "systemd", "timesync", "synchronized"), "");
  assert.equal(synced(), true);
});

test("a board already synchronised says so from its first message, at any monotonic time", () => {
  const run = tempDir("outpost-clock-sync-");
  mkdirSync(join(run, "systemd", "timesync"), { recursive: true });
  writeFileSync(join(run, "systemd", "timesync", "synchronized"), "");
  // performance.now() starts near 0: a first look must not wait for a second to pass.
  assert.equal(clockSyncProbe(run, () => 0)(), true);
});
