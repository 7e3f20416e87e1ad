// Issue 26: the rollout journal's lease (one driver per rollout) and what it keeps across a driver's death.
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import type { MqttClient } from "mqtt";
import { AnswerTrust } from "../../src/cli/answer-trust.ts";
import type { Signer } from "../../src/cli/ctl-client.ts";
import { readManifest } from "../../src/cli/ctl-update.ts";
import { KnownDevices } from "../../src/cli/known-devices.ts";
import { driveRollout } from "../../src/cli/rollout-driver.ts";
import { JOURNAL_VERSION, RolloutJournal, requestIdOf } from "../../src/cli/rollout-journal.ts";
import { DEFAULT_POLICY } from "../../src/cli/rollout-plan.ts";
import { LeaseRefused, SETTLE_MS } from "../../src/cli/rollout-wire.ts";
import { generateKeys, publicKeyText } from "../../src/commands/keys.ts";
import { fleetRelease } from "../helpers/fleet.ts";
import { tempDir } from "../helpers/temp.ts";

describe("rollout journal", () => {
  const dir = tempDir("outpost-journal-");
  const open = () => new RolloutJournal(join(dir, "rollouts.db"));
  const plan = {
    releases: [{ arch: "x64", kind: "agent", version: "1.1.0", sha256: "b".repeat(64), dir: "/r", signed: {} }],
    policy: { ...DEFAULT_POLICY, waves: [{ count: 1 }, { percent: 100 }], seed: "s" },
    waves: [["d1"], ["d2", "d3"]],
    source: { mqtt: true as const },
  };
  const me = (holder: string, pid: number, machine = "m1") => ({ holder, pid, machine });

  it("keeps its version: a journal from before versions is taken as it is; one from a newer ctl is refused, untouched", () => {
    const path = join(dir, "versions.db");
    // As the ctl of stops 33 and 34 left it: the same tables, user_version 0, a rollout in it.
    const j0 = new RolloutJournal(path);
    j0.create({ id: "ro-0", created: 1, by: "SHA256:op", machine: "m1", broker: "b:1883", prefix: "p" }, plan);
    j0.db.exec("PRAGMA user_version = 0");
    j0.close();
    const j1 = new RolloutJournal(path);
    const version = () => Number(Object.values(j1.db.prepare("PRAGMA user_version").get() ?? {})[0]);
    assert.equal(version(), JOURNAL_VERSION);
    assert.equal(j1.rollout("ro-0")?.state, "running");
    j1.db.exec(`PRAGMA user_version = ${JOURNAL_VERSION + 1}`);
    j1.close();
    const before = readFileSync(path);
    assert.throws(() => new RolloutJournal(path), /version 2, written by a newer ctl \(this one knows up to 1\)/);
    assert.deepEqual(readFileSync(path), before);
  });

  it("a rollout is driven only on the machine where it was made: another's driver is refused before it touches anything", async () => {
    const j = open();
    try {
      j.create({ id: "ro-m", created: 1, by: "SHA256:op", machine: "m1", broker: "b:1883", prefix: "p" }, plan);
      const before = JSON.stringify([j.rollout("ro-m"), j.devices("ro-m")]);
      // The machine is checked first: a client that is touched at all would throw something else.
      const client = new Proxy({}, { get: () => assert.fail("the broker was used") }) as MqttClient;
      await assert.rejects(
        driveRollout({
          journal: j,
          id: "ro-m",
          client,
          trust: {} as AnswerTrust,
          signer: {} as Signer,
          me: me("x", 1, "m2"),
          alive: () => true,
          signal: new AbortController().signal,
          onEvent: () => {},
        }),
        (err: Error) =>
          err instanceof LeaseRefused &&
          /bound to the operator machine m1, where it was made: drive it there/.test(err.message),
      );
      assert.equal(JSON.stringify([j.rollout("ro-m"), j.devices("ro-m")]), before);
    } finally {
      j.close();
    }
  });

  it("stopped (Ctrl-C, SIGTERM) while it drives: the driver ends, it does not spin", async () => {
    const j = open();
    try {
      // A real signed release: the driver opens it and serves its chunks.
      const release = fleetRelease(dir, "1.1.0", generateKeys().privatePem);
      const { manifest, signed } = readManifest(release.dir);
      const releases = [
        { arch: "x64", kind: "agent", version: "1.1.0", sha256: manifest.sha256, dir: release.dir, signed },
      ];
      j.create(
        { id: "ro-s", created: 1, by: "SHA256:op", machine: "m1", broker: "b:1883", prefix: "p" },
        { ...plan, releases },
      );
      const client = {
        on: () => client,
        off: () => client,
        subscribeAsync: async () => [],
        publish: () => client,
      } as unknown as MqttClient;
      const { privateKey, publicKey } = generateKeyPairSync("ed25519");
      const stop = new AbortController();
      // Each turn reads the clock: a driver that goes on turning once stopped is caught here, not left to spin
      // (a spinning driver never yields, so no timer of this test could fire).
      let turnsAfterStop = 0;
      const now = () => {
        if (stop.signal.aborted && ++turnsAfterStop > 1000) throw new Error("still turning after the stop");
        return Date.now();
      };
      const driving = driveRollout({
        journal: j,
        id: "ro-s",
        client,
        trust: new AnswerTrust({ pins: KnownDevices.none(), broker: "mqtt://b:1883", prefix: "p", acceptNew: false }),
        signer: { privateKey, publicText: publicKeyText(publicKey) },
        me: me("x", 1),
        alive: () => true,
        now,
        tickMs: 20,
        signal: stop.signal,
        onEvent: () => {},
      });
      // Past the driver's first wait for retained states (SETTLE_MS), into its turns.
      await new Promise((r) => setTimeout(r, SETTLE_MS + 300));
      stop.abort(new Error("stopped by the operator"));
      await assert.rejects(driving, /stopped by the operator/);
      assert.ok(turnsAfterStop <= 2, `${turnsAfterStop} turns after the stop`);
    } finally {
      j.close();
    }
  });

  it("one driver at a time: refused while the holder lives on this machine, or its lease runs elsewhere", () => {
    const j = open();
    try {
      j.create({ id: "ro-1", created: 1, by: "SHA256:op", machine: "m1", broker: "b:1883", prefix: "p" }, plan);
      const alive = new Set([100]);
      const isAlive = (pid: number) => alive.has(pid);
      assert.deepEqual(j.lease("ro-1", me("a", 100), 10, 1000, isAlive), { ok: true });
      const refused = j.lease("ro-1", me("b", 200), 20, 1000, isAlive);
      assert.deepEqual(refused, { ok: false, holder: "a", pid: 100, machine: "m1" });
      // Its holder renews it.
      assert.deepEqual(j.lease("ro-1", me("a", 100), 30, 1030, isAlive), { ok: true });
      // Killed (its pid gone): the next driver on this machine takes it at once, lease time left or not.
      alive.delete(100);
      assert.deepEqual(j.lease("ro-1", me("b", 200), 40, 1040, isAlive), { ok: true });
      // Another machine cannot see the pid: it waits for the lease to run out.
      assert.equal(j.lease("ro-1", me("c", 300, "m2"), 1000, 2000, isAlive).ok, false);
      assert.deepEqual(j.lease("ro-1", me("c", 300, "m2"), 1041, 2041, isAlive), { ok: true });
    } finally {
      j.close();
    }
  });

  it("the plan, the rows and each change outlive the process; request ids are derived, never random", () => {
    let j = open();
    j.create({ id: "ro-2", created: 1, by: "SHA256:op", machine: "m1", broker: "b:1883", prefix: "p" }, plan);
    const row = j.devices("ro-2").find((d) => d.device === "d2");
    assert.ok(row);
    j.saveDevice("ro-2", { ...row, state: "asked", attempt: 1, asked: 5, first_asked: 5, deadline: 100 }, 5);
    j.close();
    j = open();
    try {
      const again = j.devices("ro-2").find((d) => d.device === "d2");
      assert.deepEqual([again?.state, again?.attempt, again?.deadline, again?.wave], ["asked", 1, 100, 1]);
      assert.deepEqual(j.plan(j.rollout("ro-2") ?? assert.fail("no rollout")).waves, plan.waves);
      assert.equal(requestIdOf("ro-2", "d2", 1), requestIdOf("ro-2", "d2", 1));
      assert.notEqual(requestIdOf("ro-2", "d2", 1), requestIdOf("ro-2", "d2", 2));
      assert.ok(j.setState("ro-2", "paused", { by: "SHA256:op2", now: 6, reason: "by hand", from: ["running"] }));
      assert.equal(j.setState("ro-2", "paused", { by: "x", now: 7, from: ["running"] }), false, "already paused");
      assert.deepEqual(
        j.events("ro-2").map((e) => `${e.by}: ${e.what}`),
        ["SHA256:op: created: 3 devices in 2 waves", "SHA256:op2: paused: by hand"],
      );
    } finally {
      j.close();
    }
  });
});
