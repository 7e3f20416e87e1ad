// Issue 23: the second hour against a real broker (mosquitto). Each test failed on 8ee023c as its comment says.
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import mqtt from "mqtt";
import { brokerId, KnownDevices } from "../../src/cli/known-devices.ts";
import { signAnswer } from "../../src/commands/answers.ts";
import { parsePrivateKey, publicKeyText } from "../../src/commands/keys.ts";
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
    // A device that answers the update at once with its outcome, as a real one does after its trial: signed by
    // its own key, which ctl has pinned, and naming the request it answers.
    const own = generateKeyPairSync("ed25519");
    const pins = KnownDevices.load(join(dir, "known_devices"));
    pins.pin({ broker: brokerId(broker.url), prefix: PREFIX, device: "dev-fake", key: publicKeyText(own.publicKey) });
    pins.save();
    const device = await mqtt.connectAsync(broker.url);
    await device.subscribeAsync(`${PREFIX}/dev-fake/cmd/update`, { qos: 1 });
    device.on("message", (_topic, payload) => {
      const { id } = JSON.parse((JSON.parse(payload.toString()) as { payload: string }).payload) as { id: string };
      const done = { state: "committed", version: "9.9.9", from: "0.1.0", fetched: 0, id, session: "s", seq: 1 };
      const topic = `${PREFIX}/dev-fake/update`;
      device.publish(topic, signAnswer(own.privateKey, "dev-fake", topic, JSON.stringify(done)), { qos: 1 });
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
        "--known-devices",
        join(dir, "known_devices"),
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

describe("ctl update --until staged in a mixed fleet", () => {
  // Found by the review of issue 23: ctl now tells the device `until`, which an agent from before refuses as an
  // unknown parameter (BAD_PARAMS), so --until staged failed on every older agent, installed or not.
  it("asks an agent that does not know `until` again without it", async () => {
    const releaseKey = operatorKey();
    const file = join(dir, "r2.bin");
    writeFileSync(file, fakeAgent("9.9.8", process.arch === "arm64" ? "arm64" : "x64", 64 * 1024));
    const release = join(dir, "r2");
    makeRelease({ file, privateKey: parsePrivateKey(releaseKey.privatePem), out: release, kind: "agent", now: 1 });
    // An agent of the version before: a strict parameter schema without `until`.
    const device = await mqtt.connectAsync(broker.url);
    // Its status, as such an agent publishes it: no key, no signature (ctl asks again only such a device).
    await device.publishAsync(`${PREFIX}/dev-old/status`, JSON.stringify({ state: "online", version: "0.0.9" }), {
      qos: 1,
      retain: true,
    });
    await device.subscribeAsync(`${PREFIX}/dev-old/cmd/update`, { qos: 1 });
    const asked: Record<string, unknown>[] = [];
    device.on("message", (_topic, payload) => {
      const envelope = JSON.parse(payload.toString()) as { payload: string };
      const request = JSON.parse(envelope.payload) as { id: string; params: Record<string, unknown> };
      asked.push(request.params);
      const reply = (body: Record<string, unknown>) =>
        device.publish(
          `${PREFIX}/dev-old/cmd/update/reply`,
          JSON.stringify({ id: request.id, command: "update", device: "dev-old", ...body }),
          { qos: 1 },
        );
      if ("until" in request.params) {
        reply({ state: "failed", error: { code: "BAD_PARAMS", message: 'params: Unrecognized key: "until"' } });
        return;
      }
      reply({ state: "accepted" });
      device.publish(`${PREFIX}/dev-old/update`, JSON.stringify({ state: "staged", version: "9.9.8" }), { qos: 1 });
    });
    try {
      const r = await runCli(
        [
          "ctl",
          "update",
          "dev-old",
          release,
          "--until",
          "staged",
          "--broker",
          broker.url,
          "--key",
          join(dir, "ops.key"),
        ],
        {},
      );
      // Such an agent does not sign its answers either (issue 25): it stages, and ctl says so without counting it.
      assert.equal(r.code, 77, r.err + r.out);
      assert.match(r.out, /^dev-old: staged, not counted \(unsigned\)$/m);
      assert.match(r.err, /dev-old: answer not counted: unsigned \(version 0\.0\.9\): an agent before signed answers/);
      assert.deepEqual(
        asked.map((p) => "until" in p),
        [true, false],
      );
    } finally {
      await device.endAsync(true);
    }
  });
});
