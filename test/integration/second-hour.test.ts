// Issue 23: the second hour against a real broker (mosquitto). Each test failed on 8ee023c as its comment says.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import mqtt from "mqtt";
import { parsePrivateKey } from "../../src/commands/keys.ts";
import { makeRelease } from "../../src/ota/release.ts";
import { runCli } from "../helpers/cli.ts";
import { operatorKey, PREFIX } from "../helpers/commands.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { fakeAgent } from "../helpers/releases.ts";
import { tempDir } from "../helpers/temp.ts";

const dir = tempDir("outpost-second-hour-");
const ops = operatorKey();
writeFileSync(join(dir, "ops.key"), ops.privatePem, { mode: 0o600 });
let broker: Mosquitto;
before(async () => {
  broker = await Mosquitto.start();
});
after(async () => {
  await broker.stop();
});

describe("ctl update's output (item 11)", () => {
  // On 8ee023c, not on a terminal, the device's final line was printed twice (once when it came, once more at the end).
  it("prints each state once when not on a terminal", async () => {
    const releaseKey = operatorKey();
    const file = join(dir, "r.bin");
    writeFileSync(file, fakeAgent("9.9.9", process.arch === "arm64" ? "arm64" : "x64", 64 * 1024));
    const release = join(dir, "r");
    makeRelease({ file, privateKey: parsePrivateKey(releaseKey.privatePem), out: release, kind: "agent", now: 1 });
    // A device that answers the update at once with its outcome, as a real one does after its trial.
    const device = await mqtt.connectAsync(broker.url);
    await device.subscribeAsync(`${PREFIX}/dev-fake/cmd/update`, { qos: 1 });
    device.on("message", () => {
      const done = { state: "committed", version: "9.9.9", from: "0.1.0", fetched: 0 };
      device.publish(`${PREFIX}/dev-fake/update`, JSON.stringify(done), { qos: 1 });
    });
    try {
      const r = await runCli([
        "ctl",
        "update",
        "dev-fake",
        release,
        "--broker",
        broker.url,
        "--key",
        join(dir, "ops.key"),
      ]);
      assert.equal(r.code, 0, r.err);
      assert.deepEqual(
        r.out.trim().split("\n"),
        ["dev-fake         committed  9.9.9 (from 0.1.0), fetched 0.0 MiB", "dev-fake: committed"],
        r.out,
      );
    } finally {
      await device.endAsync(true);
    }
  });
});
