// Issue 26, part A: a rollout's plan, frozen at creation: waves as cumulative counts or percentages, rounded up,
// never empty; devices ordered by a printed seed after named canaries; the thresholds that pass or pause a wave.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import {
  DEFAULT_POLICY,
  DEFAULT_WAVES,
  orderDevices,
  parseWaves,
  planWaves,
  wavePassed,
  wavePauses,
} from "../../src/cli/rollout-plan.ts";
import { parsePrivateKey } from "../../src/commands/keys.ts";
import { makeRelease } from "../../src/ota/release.ts";
import { runCli } from "../helpers/cli.ts";
import { operatorKey } from "../helpers/commands.ts";
import { fakeAgent } from "../helpers/releases.ts";
import { tempDir } from "../helpers/temp.ts";

const fleet = (n: number) => Array.from({ length: n }, (_, i) => `pi-${String(i + 1).padStart(4, "0")}`);
const sizes = (n: number, waves = DEFAULT_WAVES, canaries: string[] = []) =>
  planWaves(fleet(n), { waves: parseWaves(waves), seed: "s1", canaries }).waves.map((w) => w.length);

describe("rollout plan", () => {
  it("the default waves, 1,10%,50%,100%, on fleets of 1, 2, 12, 300 and 1,000 devices: rounded up, never empty", () => {
    assert.deepEqual(sizes(1), [1]);
    assert.deepEqual(sizes(2), [1, 1]);
    assert.deepEqual(sizes(12), [1, 1, 4, 6]);
    assert.deepEqual(sizes(300), [1, 29, 120, 150]);
    assert.deepEqual(sizes(1000), [1, 99, 400, 500]);
    // 10 % of 10 is 1: no wave of its own after the canary.
    assert.deepEqual(sizes(10), [1, 4, 5]);
  });

  it("counts and percentages mix; what the last size leaves out is not in the rollout", () => {
    const plan = planWaves(fleet(300), { waves: parseWaves("2,5,10%"), seed: "s1", canaries: [] });
    assert.deepEqual(
      plan.waves.map((w) => w.length),
      [2, 3, 25],
    );
    assert.equal(plan.left.length, 270);
  });

  it("the same seed gives the same order whatever order the target came in; another seed another", () => {
    const devices = fleet(50);
    const a = orderDevices(devices, "seed-1", []);
    assert.deepEqual(orderDevices([...devices].reverse(), "seed-1", []), a);
    assert.notDeepEqual(orderDevices(devices, "seed-2", []), a);
    assert.deepEqual([...a].sort(), devices);
  });

  it("members known only from their statuses (offline now) come after every other, never in the first wave", () => {
    const all = fleet(12);
    const last = ["pi-0003", "pi-0010"];
    const plan = planWaves(all, { waves: parseWaves(DEFAULT_WAVES), seed: "s", canaries: [] }, last);
    assert.deepEqual(plan.waves.flat().slice(-2).sort(), last);
    assert.ok(!plan.waves[0]?.some((d) => last.includes(d)));
    // The others keep the order the same seed gives them without those two.
    const without = planWaves(
      all.filter((d) => !last.includes(d)),
      { waves: parseWaves("100%"), seed: "s", canaries: [] },
    );
    assert.deepEqual(plan.waves.flat().slice(0, -2), without.waves.flat());
  });

  it("named canaries go first, all in the first wave, even past its size", () => {
    const plan = planWaves(fleet(100), {
      waves: parseWaves(DEFAULT_WAVES),
      seed: "s",
      canaries: ["pi-0042", "pi-0007"],
    });
    assert.deepEqual(plan.waves[0], ["pi-0042", "pi-0007"]);
    assert.deepEqual(
      plan.waves.map((w) => w.length),
      [2, 8, 40, 50],
    );
    assert.throws(() => orderDevices(fleet(3), "s", ["pi-9999"]), /canaries not in the target: pi-9999/);
  });

  it("wave sizes that are not counts or percentages are refused", () => {
    for (const bad of ["", "0", "1,,2", "150%", "-1", "10 %x", "a"]) assert.throws(() => parseWaves(bad), /waves/);
  });

  it("a wave passes: the canary wave when every reachable device committed, a later one at 95 %", () => {
    assert.equal(wavePassed(0, { reachable: 2, committed: 1 }, DEFAULT_POLICY), false);
    assert.equal(wavePassed(0, { reachable: 2, committed: 2 }, DEFAULT_POLICY), true);
    assert.equal(wavePassed(1, { reachable: 20, committed: 18 }, DEFAULT_POLICY), false);
    assert.equal(wavePassed(1, { reachable: 20, committed: 19 }, DEFAULT_POLICY), true);
    assert.equal(wavePassed(2, { reachable: 0, committed: 0 }, DEFAULT_POLICY), true, "all offline: not blocking");
  });

  it("a wave pauses the rollout: any failure among the canaries; later, over 5 % once 3 finished", () => {
    assert.equal(wavePauses(0, { finished: 1, failed: 1 }, DEFAULT_POLICY), true);
    assert.equal(wavePauses(1, { finished: 2, failed: 2 }, DEFAULT_POLICY), false, "too few finished to judge");
    assert.equal(wavePauses(1, { finished: 3, failed: 1 }, DEFAULT_POLICY), true);
    assert.equal(wavePauses(1, { finished: 100, failed: 5 }, DEFAULT_POLICY), false, "5 % is not over 5 %");
    assert.equal(wavePauses(1, { finished: 100, failed: 6 }, DEFAULT_POLICY), true);
  });
});

describe("ctl rollout --dry-run", () => {
  const dir = tempDir("outpost-rollout-");
  const file = join(dir, "r.bin");
  writeFileSync(file, fakeAgent("0.2.0", "arm64", 64 * 1024));
  const release = join(dir, "r");
  makeRelease({ file, privateKey: parsePrivateKey(operatorKey().privatePem), out: release, kind: "agent", now: 1 });

  it("prints the plan it would freeze: the waves, the seed, and what passes a wave or pauses the rollout", async () => {
    const devices = fleet(12).join(",");
    const r = await runCli([
      "ctl",
      "rollout",
      release,
      "--devices",
      devices,
      "--seed",
      "s1",
      "--canary",
      "pi-0003",
      "--dry-run",
    ]);
    assert.equal(r.code, 0, r.err);
    const lines = r.out.trim().split("\n");
    assert.match(
      lines[0] ?? "",
      /^rollout of agent 0\.2\.0 \(arm64, [0-9a-f]{12}\) to 12 devices, seed s1, waves 1,10%,50%,100%$/,
    );
    assert.match(lines[1] ?? "", /^wave 1: +1 device +pi-0003$/);
    assert.deepEqual(
      lines.filter((l) => l.startsWith("wave ")).map((l) => Number(/wave \d+: +(\d+)/.exec(l)?.[1])),
      [1, 1, 4, 6],
    );
    assert.match(r.out, /95% of a later wave's reachable devices, committed, held for 5m/);
    assert.match(r.out, /past 5% failed once 3 of a wave finished; a device not committed within 30m counts as failed/);
    const json = await runCli(["ctl", "rollout", release, "--devices", devices, "--seed", "s1", "--dry-run", "--json"]);
    const plan = JSON.parse(json.out) as { waves: string[][] };
    assert.deepEqual(plan.waves.flat().sort(), fleet(12));
  });

  it("every pinned device is a target; a device nobody pinned is refused before anything is frozen", async () => {
    const pins = join(dir, "known_devices");
    const key = "ed25519:Rl6eNbDXSwIiFJulSYcetsCof3kimBw+GEW74coW54M=";
    writeFileSync(pins, ["a", "b", "c"].map((d) => `127.0.0.1:1883 outpost/v1 pi-${d} ${key}`).join("\n"));
    const r = await runCli(["ctl", "rollout", release, "--all-pinned", "--known-devices", pins, "--dry-run"]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /to 3 devices/);
    const db = join(dir, "rollouts.db");
    const unpinned = await runCli(
      ["ctl", "rollout", release, "--devices", "pi-a,pi-x", "--known-devices", pins, "--rollouts", db],
      {},
    );
    assert.equal(unpinned.code, 77);
    assert.match(unpinned.err, /not pinned, so nothing they say would count: pi-x;/);
    const list = await runCli(["ctl", "rollout", "list", "--rollouts", db]);
    assert.equal(list.out, "no rollouts\n", "nothing was frozen");
    const bad = await runCli(["ctl", "rollout", release, "--devices", "a", "--waves", "1,200%", "--dry-run"]);
    assert.equal(bad.code, 64);
    assert.match(bad.err, /200% is not a percentage/);
  });
});
