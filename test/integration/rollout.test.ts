// Issue 26: rollouts in waves through a simulated fleet (test/helpers/fleet.ts: the real agent code, 30
// devices in this process, a scripted installer each) and a real mosquitto; the driver is `outpost ctl
// rollout` in its own process, so that it can be killed anywhere and started again.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { readManifest } from "../../src/cli/ctl-update.ts";
import { parseWaves, planWaves } from "../../src/cli/rollout-plan.ts";
import { fingerprintOf, generateKeys } from "../../src/commands/keys.ts";
import { MAIN } from "../helpers/agent-process.ts";
import { runCli } from "../helpers/cli.ts";
import { PREFIX } from "../helpers/commands.ts";
import { Fleet, fleetRelease } from "../helpers/fleet.ts";
import { Mosquitto } from "../helpers/mosquitto.ts";
import { Watch } from "../helpers/mqtt-watch.ts";
import { pinKey } from "../helpers/pins.ts";
import { tempDir } from "../helpers/temp.ts";
import { waitUntil } from "../helpers/wait.ts";

const N = 30;
const IDS = Array.from({ length: N }, (_, i) => `sim-${String(i).padStart(2, "0")}`);
const SEED = "s1";
/** What a simulated device keeps of its updates (its update directory and root's records), for a failure's message. */
const filesOf = (dir: string): string => {
  const out: string[] = [];
  const walk = (p: string) => {
    for (const e of readdirSync(p, { withFileTypes: true })) {
      const f = join(p, e.name);
      if (e.isDirectory()) walk(f);
      else if (e.name.endsWith(".json") || e.name.endsWith(".request"))
        out.push(`${f}: ${readFileSync(f, "utf8").slice(0, 600)}`);
      else out.push(f);
    }
  };
  walk(join(dir, "update"));
  walk(join(dir, "..", "records"));
  return out.join("\n");
};
/** The board fixtures the simulated devices get, in turn, and the kind each reports. */
const BOARDS = [
  { fixture: "pi4", kind: "raspberry-pi" },
  { fixture: "jetson-orin-nano", kind: "jetson" },
  { fixture: "x86", kind: "x86" },
  { fixture: "pi5", kind: "raspberry-pi" },
];
const WAVES = "1,10%,50%,100%";

interface Status {
  id: string;
  state: string;
  reason: string | null;
  waves: {
    wave: number;
    total: number;
    committed: number;
    rolledBack: number;
    failed: number;
    timedOut: number;
    offline: number;
    pending: number;
    inFlight: number;
    started: string | null;
  }[];
  devices: { device: string; state: string }[];
}

describe("a rollout in waves through a simulated fleet", () => {
  const dir = tempDir("outpost-rollout-");
  const ops = generateKeys();
  const rel = generateKeys();
  let broker: Mosquitto;
  let fleet: Fleet;
  const keyFile = join(dir, "ops.key");
  const pins = join(dir, "known_devices");
  const db = join(dir, "rollouts.db");
  const children = new Set<ChildProcess>();
  const plan = planWaves(IDS, { waves: parseWaves(WAVES), seed: SEED, canaries: [] }).waves;
  const release = (version: string) => fleetRelease(dir, version, rel.privatePem);
  const flags = () => ["--broker", broker.url, "--key", keyFile, "--known-devices", pins, "--rollouts", db];

  /** `outpost ctl rollout ...` in its own process (so that it can be SIGKILLed). */
  function driver(args: string[]) {
    const child = spawn(process.execPath, [MAIN, "ctl", "rollout", ...args, ...flags()], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    children.add(child);
    let out = "";
    let err = "";
    child.stdout?.on("data", (c: Buffer) => {
      out += c.toString();
    });
    child.stderr?.on("data", (c: Buffer) => {
      err += c.toString();
    });
    const ended = new Promise<number | null>((resolve) =>
      child.on("exit", (code) => {
        children.delete(child);
        resolve(code);
      }),
    );
    // A driver that never ends fails the test with what it printed, rather than hanging it.
    const exited = Promise.race([
      ended,
      new Promise<number | null>((_, reject) =>
        setTimeout(() => reject(new Error(`the driver did not end:\n${out}\n${err}`)), 150_000).unref(),
      ),
    ]);
    return { child, exited, out: () => out, err: () => err };
  }

  async function status(id: string): Promise<Status> {
    const r = await runCli(["ctl", "rollout", "status", id, "--json", "--all", ...flags()]);
    assert.equal(r.code, 0, r.err);
    return JSON.parse(r.out) as Status;
  }
  async function latest(): Promise<string> {
    const r = await runCli(["ctl", "rollout", "list", "--json", ...flags()]);
    const id = r.out
      .trim()
      .split("\n")
      .filter(Boolean)
      .map((l) => (JSON.parse(l) as Status).id)
      .at(-1);
    // "" when the journal has none yet.
    return id ?? "";
  }

  /** Whether the driver answers a chunk request published as `device` within 3 s. */
  async function chunkAnswered(device: string, release: string): Promise<boolean> {
    const watch = await Watch.open(broker.port, [`${PREFIX}/${device}/update/data`]);
    try {
      const request = { id: `probe-${device}`, release, file: "artifact", offset: 0, size: 1024 };
      await watch.client.publishAsync(`${PREFIX}/${device}/update/get`, JSON.stringify(request), { qos: 1 });
      return await watch
        .waitFor((m) => m.text.startsWith(`{"id":"probe-${device}"`), 3000, "a chunk answer")
        .then(() => true)
        .catch(() => false);
    } finally {
      await watch.close();
    }
  }

  before(async () => {
    broker = await Mosquitto.start();
    writeFileSync(keyFile, ops.privatePem, { mode: 0o600 });
    fleet = new Fleet(IDS, {
      dir,
      brokerUrl: broker.url,
      operatorKey: ops.publicText,
      releaseKey: rel.publicText,
      running: { version: "1.0.0", sha256: "a".repeat(64) },
      boards: BOARDS.map((b) => b.fixture),
    });
    await fleet.start();
    for (const d of fleet.devices) await pinKey(pins, broker.url, d.id, d.publicKeyFile);
  });
  after(async () => {
    for (const c of children) c.kill("SIGKILL");
    await fleet?.stop();
    await broker?.stop();
  });

  it("each simulated device reads its own board tree: its status names that board", async () => {
    const watch = await Watch.open(broker.port, [`${PREFIX}/+/status`]);
    try {
      for (const [i, id] of IDS.entries()) {
        const want = BOARDS[i % BOARDS.length]?.kind;
        const got = await watch.waitFor((m) => m.topic === `${PREFIX}/${id}/status`, 10_000, `${id}'s status`);
        assert.equal((got.json.board as { kind?: string } | undefined)?.kind, want, id);
      }
    } finally {
      await watch.close();
    }
  });

  it("pauses in the wave where the failures cross the threshold, every count right; resumed, the failure accepted is judged no more", async () => {
    const a = release("1.1.0");
    // A group's members are the devices that answer a signed ping to it, with their pinned keys.
    const groupPlan = (discover: string) =>
      runCli(["ctl", "rollout", a.dir, "--group", "sim", "--discover", discover, "--dry-run", ...flags()]);
    const group = await groupPlan("8s");
    assert.equal(group.code, 0, group.err);
    assert.match(group.out, new RegExp(`to ${N} devices`));
    assert.match(group.err, new RegExp(`group sim: ${N} members answered, signed by their pinned keys`));
    const third = plan[2] ?? [];
    const failing = third[4] as string;
    fleet.device(failing).outcome = "rollback";
    const offline = plan[3]?.[0] as string;
    await fleet.device(offline).stop();
    // A member offline now is still one: its last status, signed by its pinned key, names the group.
    const without = await groupPlan("5s");
    assert.equal(without.code, 0, without.err);
    assert.match(without.out, new RegExp(`to ${N} devices`));
    assert.match(
      without.err,
      new RegExp(
        `group sim: ${N - 1} members answered.*; 1 more named it in their last signed status \\(${offline}\\)`,
      ),
    );
    const run = driver([
      a.dir,
      "--devices",
      IDS.join(","),
      "--seed",
      SEED,
      "--waves",
      WAVES,
      "--soak",
      "1s",
      "--deadline",
      "60s",
    ]);
    const code = await run.exited;
    assert.equal(code, 1, `${run.out()}\n${run.err()}`);
    assert.match(run.err(), /paused: wave 3: 1 of \d+ finished failed/);
    const id = await latest();
    const s = await status(id);
    assert.equal(s.state, "paused");
    const [w1, w2, w3, w4] = s.waves;
    assert.deepEqual([w1?.committed, w2?.committed], [1, 2]);
    // The devices already updating when it paused finished; nothing more was asked.
    assert.deepEqual([w3?.committed, w3?.rolledBack, w3?.inFlight, w3?.pending], [third.length - 1, 1, 0, 0]);
    assert.equal(w4?.started, null);
    assert.deepEqual([w4?.committed, w4?.offline, w4?.pending], [0, 1, (plan[3]?.length ?? 0) - 1]);
    assert.equal(s.devices.find((d) => d.device === failing)?.state, "rolled-back");
    for (const d of fleet.devices) assert.ok((d.installs.get(a.name) ?? 0) <= 1, `${d.id} installed once at most`);
    // Resumed: the failure so far is accepted (by the key that resumed), and judged no more.
    const resumed = driver(["resume", id]);
    assert.equal(await resumed.exited, 0, resumed.err());
    const done = await status(id);
    const sum = (k: "committed" | "rolledBack" | "offline") => done.waves.reduce((n, w) => n + w[k], 0);
    assert.deepEqual([done.state, sum("committed"), sum("rolledBack"), sum("offline")], ["completed", N - 2, 1, 1]);
    fleet.device(failing).outcome = "commit";
    await fleet.device(offline).start();
  });

  it("with --approve, a wave waits for an operator; abort from another shell ends the driver", async () => {
    const a = release("1.1.0");
    const two = (plan[1] ?? []).slice(0, 2);
    const run = driver([a.dir, "--devices", two.join(","), "--waves", "1,100%", "--approve", "--soak", "1s"]);
    let s: Status | undefined;
    for (const until = Date.now() + 60_000; Date.now() < until; await new Promise((r) => setTimeout(r, 200))) {
      const list = await runCli(["ctl", "rollout", "list", "--json", ...flags()]);
      const id = list.out
        .trim()
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Status)
        .at(-1)?.id;
      s = id === undefined ? undefined : await status(id);
      if (s?.state === "running" && (s as { waiting?: string }).waiting?.includes("waits for approval")) break;
    }
    assert.ok(s, "the rollout waits for approval");
    assert.equal(s.waves[1]?.started, null, "wave 2 did not start without approval");
    // Paused from another shell: the driver ends, and the list says who paused it.
    // By another operator, with a key of their own: the list names theirs, not the maker's.
    const other = generateKeys();
    const otherKey = join(dir, "ops-2.key");
    writeFileSync(otherKey, other.privatePem, { mode: 0o600 });
    const byOther = flags().map((f) => (f === keyFile ? otherKey : f));
    const pause = await runCli(["ctl", "rollout", "pause", s.id, "--reason", "lunch", ...byOther]);
    assert.equal(pause.code, 0, pause.err);
    assert.equal(await run.exited, 1);
    assert.equal((await status(s.id)).state, "paused");
    const listed = await runCli(["ctl", "rollout", "list", ...flags()]);
    const line = listed.out.split("\n").find((l) => l.startsWith(`${s.id}  paused `)) ?? listed.out;
    const [maker, pauser] = [ops.publicText, other.publicText].map(fingerprintOf);
    assert.ok(line.includes(`by ${maker}; last paused: lunch by ${pauser} at `), line);
    // Resumed, it waits for approval again; aborted from another shell, the driver ends.
    const resumed = driver(["resume", s.id]);
    let again = "";
    for (const until = Date.now() + 30_000; again !== "running" && Date.now() < until; ) {
      await new Promise((r) => setTimeout(r, 200));
      again = (await status(s.id)).state;
    }
    assert.equal(again, "running", "running again after resume");
    const abort = await runCli(["ctl", "rollout", "abort", s.id, "--reason", "not today", ...flags()]);
    assert.equal(abort.code, 0, abort.err);
    assert.equal(await resumed.exited, 1);
    assert.match(resumed.err(), /aborted: not today/);
    assert.equal((await status(s.id)).state, "aborted");
  });

  it("killed at 3 seeded points and started again: it goes on; no device installs twice; counts equal the script", async () => {
    const b = release("1.2.0");
    const later = plan[3] ?? [];
    const failing = later[2] as string;
    fleet.device(failing).outcome = "rollback";
    // Already on the release (updated by hand earlier): answers "current", counted as committed.
    const current = later[5] as string;
    const dev = fleet.device(current);
    await dev.stop();
    dev.release = { name: b.name, version: "1.2.0" };
    await dev.start();
    const offline = later[7] as string;
    await fleet.device(offline).stop();
    // Two devices whose agent is killed once it took the request (no offline: the broker says lost), then
    // started again: each must still commit, and install once.
    const crashing = [plan[2]?.[1] as string, later[3] as string].map((d) => fleet.device(d));
    for (const d of crashing) d.outcome = "crash";
    const wills = await Watch.open(
      broker.port,
      crashing.map((d) => `${PREFIX}/${d.id}/status`),
    );
    const args = [b.dir, "--devices", IDS.join(","), "--seed", SEED, "--waves", WAVES, "--soak", "1s"];
    const policy = ["--deadline", "90s", "--failure", "50%"];
    // A seeded sequence of kill points: the same run each time.
    let x = 7;
    const next = () => {
      x = (x * 1103515245 + 12345) % 2 ** 31;
      return 800 + (x % 2500);
    };
    const earlier = await latest();
    let run = driver([...args, ...policy]);
    // The kill points count from when the rollout is in the journal (a busy machine starts ctl slowly).
    let id = earlier;
    for (const until = Date.now() + 60_000; id === earlier && Date.now() < until; ) {
      await new Promise((r) => setTimeout(r, 50));
      id = await latest();
    }
    assert.notEqual(id, earlier, "the rollout made within 60 s");
    for (let k = 0; k < 3; k++) {
      await new Promise((r) => setTimeout(r, next()));
      run.child.kill("SIGKILL");
      await run.exited;
      run = driver(["resume", id]);
    }
    const code = await run.exited;
    assert.equal(code, 0, `${run.out()}\n${run.err()}`);
    let s = await status(id);
    assert.equal(s.state, "completed");
    const sum = (k: "committed" | "rolledBack" | "failed" | "timedOut" | "offline") =>
      s.waves.reduce((n, w) => n + w[k], 0);
    const notCommitted = s.devices.filter((d) => d.state !== "committed");
    assert.deepEqual(
      [sum("committed"), sum("rolledBack"), sum("failed"), sum("timedOut"), sum("offline")],
      [N - 2, 1, 0, 0, 1],
      `devices not committed: ${JSON.stringify(notCommitted)}; crashing: ${crashing.map((d) => `${d.id} ${filesOf(d.stateDir)}`).join(" ")}`,
    );
    assert.equal(dev.installs.get(b.name) ?? 0, 0, "the device already on the release installed nothing");
    for (const d of crashing) {
      // Cut without a farewell: the broker published the will.
      assert.ok(
        wills.items.some((m) => m.topic === `${PREFIX}/${d.id}/status` && m.json.state === "lost" && !m.retain),
        `${d.id}'s will (lost) was published`,
      );
      assert.equal(d.crashes, 1, `${d.id} crashed once`);
      assert.equal(d.installs.get(b.name), 1, `${d.id} installed once after its crash`);
      assert.equal(s.devices.find((x) => x.device === d.id)?.state, "committed", `${d.id} committed after its crash`);
    }
    await wills.close();
    for (const d of fleet.devices)
      assert.ok((d.installs.get(b.name) ?? 0) <= 1, `${d.id} installed 1.2.0 once at most`);
    // Each device recorded the rollout before it acted, and how it ended.
    for (const d of fleet.devices.filter((d) => d.online && d.id !== current)) {
      const record = JSON.parse(readFileSync(join(d.stateDir, "update", "rollouts.json"), "utf8")) as {
        entries: { rollout: string; outcome?: { state: string } }[];
      };
      const entry: { outcome?: { state: string } } | undefined = record.entries.find((e) => e.rollout === id);
      assert.equal(entry?.outcome?.state, d.id === failing ? "rolled-back" : "committed", d.id);
    }
    // The offline device returns: resumed, the rollout updates it and completes again with none left.
    await fleet.device(offline).start();
    const again = driver(["resume", id]);
    assert.equal(await again.exited, 0, again.err());
    s = await status(id);
    assert.deepEqual([s.state, sum("committed"), sum("offline")], ["completed", N - 1, 0]);
    assert.equal(fleet.device(offline).installs.get(b.name), 1);
  });

  it("a device past its deadline counts as timed out; its late commit is reconciled into the counts", async () => {
    const c = release("1.3.0");
    const five = (plan[2] ?? []).slice(0, 5);
    const slow = five[1] as string;
    fleet.device(slow).outcome = "slow";
    fleet.device(slow).slowMs = 14_000;
    const run = driver([
      c.dir,
      "--devices",
      five.join(","),
      "--waves",
      "1,3,100%",
      "--seed",
      SEED,
      "--soak",
      "5s",
      "--success",
      "50%",
      "--deadline",
      "10s",
      "--cap",
      "1",
      "--approve",
    ]);
    // One driver per rollout: a second one on this machine is refused while the first lives.
    let id: string | undefined;
    for (const until = Date.now() + 30_000; id === undefined && Date.now() < until; ) {
      const r = await runCli(["ctl", "rollout", "list", "--json", ...flags()]);
      const all = r.out
        .trim()
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Status);
      id = all.find((x) => x.state === "running")?.id;
      if (id === undefined) await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(id, "the rollout made within 30 s");
    const second = driver(["resume", id as string]);
    assert.equal(await second.exited, 1);
    assert.match(second.err(), /is driven by .* \(pid \d+ on /);
    // The cap: never more than one device in flight, sampled from the journal while it runs.
    let most = 0;
    let ended = false;
    void run.exited.finally(() => {
      ended = true;
    });
    const approved = new Set<string>();
    // Chunks go only to a device in flight: asked as the slow device while it updates, and as a device of a
    // later wave (pending), the same request is answered once.
    const sha = readManifest(c.dir).manifest.sha256;
    const later = five[4] as string;
    let served: { inFlight: boolean; pending: boolean } | undefined;
    while (!ended) {
      const r = await runCli(["ctl", "rollout", "status", id as string, "--json", "--all", ...flags()]);
      const now = JSON.parse(r.out) as Status & { waiting: string | null };
      most = Math.max(most, ...now.waves.map((w) => w.inFlight));
      const stateOf = (d: string) => now.devices.find((x) => x.device === d)?.state;
      if (!served && stateOf(slow) === "updating" && stateOf(later) === "pending") {
        served = { inFlight: await chunkAnswered(slow, sha), pending: await chunkAnswered(later, sha) };
      }
      // --approve: each wave after the first waits for an operator, in another process.
      const waits = /^wave (\d+) waits for approval/.exec(now.state === "running" ? (now.waiting ?? "") : "");
      if (waits?.[1] && !approved.has(waits[1])) {
        const ok = await runCli(["ctl", "rollout", "approve", id as string, ...flags()]);
        assert.equal(ok.code, 0, ok.err);
        approved.add(waits[1]);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(most, 1, "one device in flight at most");
    assert.deepEqual(served, { inFlight: true, pending: false }, "chunks served to the device in flight only");
    assert.deepEqual([...approved], ["2", "3"], "waves 2 and 3 approved, each once");
    const code = await run.exited;
    assert.equal(code, 0, `${run.out()}\n${run.err()}`);
    assert.match(run.out(), new RegExp(`${slow}: timed-out: TIMED_OUT`));
    // The late commit: reconciled by the driver, or (if it came after the rollout completed) at the next resume.
    await waitUntil(() => fleet.device(slow).release.name === c.name, 60_000, "the slow device committed");
    const again = driver(["resume", id as string]);
    assert.equal(await again.exited, 0, again.err());
    const s = await status(id as string);
    const sum = (k: "committed" | "timedOut") => s.waves.reduce((n, w) => n + w[k], 0);
    assert.deepEqual([s.state, sum("committed"), sum("timedOut")], ["completed", 5, 0]);
    assert.equal(s.devices.find((d) => d.device === slow)?.state, "committed");
    fleet.device(slow).outcome = "commit";
  });
});
