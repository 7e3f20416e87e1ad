// `outpost ctl rollout` (issue 26): makes a rollout (its plan frozen in the journal on this machine) and drives
// it (rollout-driver.ts); `status`, `list`, `pause`, `resume`, `approve` and `abort` act on the journal.
import { randomBytes } from "node:crypto";
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { errorMessage } from "../core/errors.ts";
import { printable } from "./answer-trust.ts";
import { type Dots, probeDots, splitDotsError } from "./broker-probe.ts";
import { DeviceCaller, withClient } from "./ctl-client.ts";
import { BROKER_FLAGS, brokerOptions, type CtlSettings, ctlSettings, durationFlag } from "./ctl-settings.ts";
import { answerTrust, knownDevices } from "./ctl-trust.ts";
import { readManifest } from "./ctl-update.ts";
import { EXIT, type Host, UsageError } from "./host.ts";
import { brokerId, brokerIds } from "./known-devices.ts";
import { machineId, newRolloutId } from "./rollout-journal.ts";
import { membersFromStatuses } from "./rollout-members.ts";
import { DEFAULT_POLICY, DEFAULT_WAVES, parseWaves, planWaves, type RolloutPolicy } from "./rollout-plan.ts";
import { drive, openJournal, signerOf } from "./rollout-run.ts";
import { rolloutStatus, statusText } from "./rollout-view.ts";

const FLAGS = {
  ...BROKER_FLAGS,
  "dry-run": { type: "boolean" },
  devices: { type: "string" },
  "all-pinned": { type: "boolean" },
  group: { type: "string" },
  discover: { type: "string" },
  waves: { type: "string" },
  seed: { type: "string" },
  canary: { type: "string", multiple: true },
  success: { type: "string" },
  soak: { type: "string" },
  failure: { type: "string" },
  "min-finished": { type: "string" },
  deadline: { type: "string" },
  cap: { type: "string" },
  approve: { type: "boolean" },
  key: { type: "string" },
  rollouts: { type: "string" },
  http: { type: "string" },
  task: { type: "string" },
  reason: { type: "string" },
  all: { type: "boolean" },
} as const;

function share(flag: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const m = /^(\d+(?:\.\d+)?)%$/.exec(text);
  const value = m ? Number(m[1]) / 100 : Number.NaN;
  if (!(value >= 0 && value <= 1)) throw new UsageError(`--${flag} must be a percentage like 95%, not ${text}`);
  return value;
}

function count(flag: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!(Number.isInteger(n) && n > 0)) throw new UsageError(`--${flag} must be a positive integer, not ${text}`);
  return n;
}

const pct = (x: number) => `${Math.round(x * 1000) / 10}%`;
const mins = (ms: number) => (ms % 60_000 === 0 ? `${ms / 60_000}m` : `${ms / 1000}s`);

/**
 * `ctl rollout RELEASE_DIR... (--devices A,B,... | --all-pinned) [--dry-run] [--waves 1,10%,50%,100%] [--seed S]
 * [--canary D]... [--success 95%] [--soak 5m] [--failure 5%] [--min-finished 3] [--deadline 30m] [--cap N]
 * [--approve] [--http URL] [--task T]`: the plan, printed (or as JSON); without --dry-run, frozen and driven.
 * `ctl rollout status|list|pause|resume|approve|abort [ID]`: the journal's rollouts.
 */
export async function rolloutCommand(host: Host, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, options: FLAGS, allowPositionals: true });
  const [verb, ...rest] = positionals;
  if (verb !== undefined && VERBS.has(verb)) return rolloutVerb(host, verb, rest, values);
  return createRollout(host, positionals, values);
}

type Values = ReturnType<typeof parseArgs<{ options: typeof FLAGS; allowPositionals: true }>>["values"];

async function createRollout(host: Host, positionals: string[], values: Values): Promise<number> {
  if (positionals.length === 0) throw new UsageError("ctl rollout: expected RELEASE_DIR... (one per architecture)");
  const releases = positionals.map((dir) => ({ dir, ...readManifest(dir).manifest }));
  const arches = releases.map((r) => r.target.arch);
  if (new Set(arches).size !== arches.length) {
    throw new UsageError("ctl rollout: one release per architecture (two name the same one)");
  }
  const settings = ctlSettings(host, values);
  const o = brokerOptions(settings);
  let devices: string[];
  const targets = [values.devices, values["all-pinned"], values.group].filter((v) => v !== undefined).length;
  if (targets !== 1)
    throw new UsageError("ctl rollout: the target is one of --devices A,B,..., --all-pinned, --group G");
  let last: string[] = [];
  if (values.group !== undefined) {
    const found = await groupMembers(host, settings, values.group, durationFlag("discover", values.discover, 5000));
    devices = found.members;
    last = found.offline;
  } else if (values.devices !== undefined) {
    devices = values.devices.split(",").map((d) => d.trim());
    if (devices.some((d) => d === "")) throw new UsageError("--devices: expected A,B,...");
  } else {
    const brokers = brokerIds(o.url, o.failover);
    const pinned = knownDevices(settings)
      .all()
      .filter((p) => p.prefix === o.prefix && (brokers.includes(p.broker) || p.broker === "*"))
      .map((p) => p.device);
    devices = [...new Set(pinned)];
  }
  await refuseSplitDots(o, devices);
  let policy: RolloutPolicy;
  try {
    policy = {
      ...DEFAULT_POLICY,
      waves: parseWaves(values.waves ?? DEFAULT_WAVES),
      seed: values.seed ?? randomBytes(8).toString("hex"),
      canaries: values.canary ?? [],
      success: share("success", values.success, DEFAULT_POLICY.success),
      soakMs: durationFlag("soak", values.soak, DEFAULT_POLICY.soakMs),
      failure: share("failure", values.failure, DEFAULT_POLICY.failure),
      minFinished: count("min-finished", values["min-finished"]) ?? DEFAULT_POLICY.minFinished,
      deadlineMs: durationFlag("deadline", values.deadline, DEFAULT_POLICY.deadlineMs),
      ...(values.cap === undefined ? {} : { cap: count("cap", values.cap) }),
      approval: values.approve === true,
    };
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`ctl rollout: ${errorMessage(err)}`);
  }
  let plan: ReturnType<typeof planWaves>;
  try {
    plan = planWaves(devices, policy, last);
  } catch (err) {
    throw new UsageError(`ctl rollout: ${errorMessage(err)}`);
  }
  if (values.json) {
    const release = releases.map((r) => ({ arch: r.target.arch, version: r.version, sha256: r.sha256, dir: r.dir }));
    host.stdout.write(`${JSON.stringify({ releases: release, policy, waves: plan.waves, left: plan.left })}\n`);
  } else {
    const what = releases.map((r) => `${r.kind} ${r.version} (${r.target.arch}, ${r.sha256.slice(0, 12)})`).join(", ");
    const total = plan.waves.reduce((n, w) => n + w.length, 0);
    host.stdout.write(
      `rollout of ${what} to ${total} device${total === 1 ? "" : "s"}, seed ${policy.seed}, waves ${values.waves ?? DEFAULT_WAVES}\n`,
    );
    for (const [i, wave] of plan.waves.entries()) {
      const shown = wave.slice(0, 8).join(" ") + (wave.length > 8 ? ` ... (${wave.length - 8} more)` : "");
      host.stdout.write(
        `wave ${i + 1}: ${String(wave.length).padStart(4)} ${wave.length === 1 ? "device " : "devices"}  ${shown}\n`,
      );
    }
    if (plan.left.length > 0) host.stdout.write(`not in the rollout: ${plan.left.length} (the last wave's size)\n`);
    host.stdout.write(
      `a wave passes when every reachable canary, then ${pct(policy.success)} of a later wave's reachable devices, committed, held for ${mins(policy.soakMs)}${policy.approval ? ", and an operator approves the next" : ""}\n` +
        `the rollout pauses at any canary failure, or past ${pct(policy.failure)} failed once ${policy.minFinished} of a wave finished; a device not committed within ${mins(policy.deadlineMs)} counts as failed${policy.cap === undefined ? "" : `; at most ${policy.cap} updating at once`}\n`,
    );
  }
  if (values["dry-run"]) return EXIT.OK;
  // Success counts only what a device's pinned key signed: a device nobody pinned could never pass a wave.
  const trust = answerTrust(host, settings, o, false, true);
  const unpinned = plan.waves.flat().filter((d) => trust.pinOf(d) === undefined);
  if (unpinned.length > 0) {
    host.stderr.write(
      `outpost: not pinned, so nothing they say would count: ${unpinned.slice(0, 10).join(" ")}${unpinned.length > 10 ? ` ... (${unpinned.length - 10} more)` : ""}; pin them (outpost ctl trust, deploy.sh) first\n`,
    );
    return EXIT.UNVERIFIED;
  }
  const signer = signerOf(settings);
  const journal = openJournal(settings);
  try {
    const now = Date.now();
    const id = newRolloutId(now);
    journal.create(
      { id, created: now, by: signer.by, machine: machineId(), broker: brokerId(o.url), prefix: o.prefix },
      {
        releases: releases.map((r) => ({
          arch: r.target.arch,
          kind: r.kind,
          version: r.version,
          sha256: r.sha256,
          dir: resolve(r.dir),
          signed: readManifest(r.dir).signed,
        })),
        policy,
        waves: plan.waves,
        source: values.http === undefined ? { mqtt: true } : { http: values.http },
        ...(values.task === undefined ? {} : { task: values.task }),
      },
    );
    host.stdout.write(
      `${values.json ? JSON.stringify({ rollout: id }) : `rollout ${id} (journal ${settings.rollouts.value})`}\n`,
    );
    return await drive(host, settings, journal, id, signer, values.json === true);
  } finally {
    journal.close();
  }
}

/**
 * A group's members, as a rollout freezes them: the devices whose pinned key signed an answer to a `ping` sent
 * to the group within `windowMs`, and those offline now whose recent signed status names the group
 * (rollout-members.ts). The second come last in the plan, never among the first wave's, so that a member that
 * does not return cannot hold up the canary wave. A member whose last word was its will (`lost`, unsigned), or
 * whose status is over 7 days old by ctl's clock, is found only if it answers: name it with --devices.
 */
async function groupMembers(
  host: Host,
  settings: CtlSettings,
  group: string,
  windowMs: number,
): Promise<{ members: string[]; offline: string[] }> {
  const o = brokerOptions(settings);
  const trust = answerTrust(host, settings, o, false, true);
  const signer = signerOf(settings);
  // The call reads the devices' retained statuses (their keys, and here their groups) before any answer.
  const result = await withClient(o, (client) =>
    new DeviceCaller(client, o.prefix, signer, trust, o.commandForm).call({
      command: "ping",
      group,
      timeoutMs: windowMs,
      validityMs: 60_000,
    }),
  );
  const answered = new Set(result.finals.map((r) => r.device));
  const offline = membersFromStatuses(trust, group, answered, Date.now());
  const unverified = new Set(result.refused.map((r) => r.reply.device)).size;
  host.stderr.write(
    `outpost: group ${group}: ${answered.size} members answered, signed by their pinned keys, within ${windowMs / 1000}s${offline.length > 0 ? `; ${offline.length} more named it in their last signed status (${offline.slice(0, 5).join(" ")}${offline.length > 5 ? " ..." : ""}): pending until they return, after the others` : ""}${unverified > 0 ? `; ${unverified} answers not counted (unpinned, unsigned or forged)` : ""}\n`,
  );
  if (answered.size === 0) throw new UsageError(`ctl rollout: no pinned member of group ${group} answered`);
  return { members: [...answered, ...offline].sort(), offline };
}

/**
 * On a broker that turns `.` into a level separator (RabbitMQ), a device id with a dot cannot be told apart from
 * the levels it makes: its request would never arrive and its answers never be read. Such a rollout is refused
 * before anything is frozen, as `ctl call` refuses such a device.
 */
async function refuseSplitDots(o: ReturnType<typeof brokerOptions>, devices: string[]): Promise<void> {
  const dotted = devices.filter((d) => d.includes("."));
  // As ctl call: only `auto` asks the broker; a form named by the operator is taken as it is.
  if (dotted.length === 0 || o.commandForm !== "auto") return;
  const dots = await withClient(o, (client) => probeDots(client, o.prefix)).catch((): Dots => "unknown");
  if (dots !== "split") return;
  const one = dotted.length === 1;
  throw splitDotsError(
    `${one ? "device" : "devices"} ${dotted.slice(0, 5).join(" ")}${dotted.length > 5 ? " ..." : ""}`,
    one,
  );
}

const VERBS = new Set(["status", "list", "pause", "resume", "approve", "abort"]);

/** Who changes a rollout: the operator's key when ctl has one, else the user on this machine. */
function whoOf(host: Host, settings: CtlSettings): string {
  return settings.key.value === undefined ? `${host.env.USER ?? "someone"}@${host.hostname}` : signerOf(settings).by;
}

async function rolloutVerb(host: Host, verb: string, rest: string[], values: Values): Promise<number> {
  const settings = ctlSettings(host, values);
  const journal = openJournal(settings);
  try {
    if (verb === "list") {
      const all = journal.list();
      if (values.json) for (const r of all) host.stdout.write(`${JSON.stringify(rolloutStatus(journal, r))}\n`);
      else if (all.length === 0) host.stdout.write("no rollouts\n");
      for (const r of values.json ? [] : all) {
        const s = rolloutStatus(journal, r);
        const c = s.waves.reduce((n, w) => ({ total: n.total + w.total, committed: n.committed + w.committed }), {
          total: 0,
          committed: 0,
        });
        const what = s.releases.map((x) => `${x.version} (${x.arch})`).join(", ");
        // Who changed it last (a pause, a resume, an approval, an abort), when anyone did after making it.
        const last = s.events.filter((e) => e.by !== "driver" && !e.what.startsWith("created")).at(-1);
        const changed = last ? `; last ${printable(last.what, 80)} by ${printable(last.by, 64)} at ${last.at}` : "";
        host.stdout.write(
          `${r.id}  ${r.state.padEnd(9)}  ${c.committed}/${c.total} committed  ${what}  made ${s.created} by ${r.by}${changed}\n`,
        );
      }
      return EXIT.OK;
    }
    const id = rest[0] ?? (verb === "status" ? journal.list().at(-1)?.id : undefined);
    if (id === undefined || rest.length > 1) throw new UsageError(`ctl rollout ${verb}: expected one rollout id`);
    const r = journal.rollout(id);
    if (!r) {
      host.stderr.write(`outpost: no rollout ${printable(id, 80)} in ${settings.rollouts.value}\n`);
      return EXIT.FAILURE;
    }
    const now = Date.now();
    const reason = values.reason;
    switch (verb) {
      case "status": {
        const s = rolloutStatus(journal, r, values.all === true);
        host.stdout.write(values.json ? `${JSON.stringify(s)}\n` : statusText(s));
        return EXIT.OK;
      }
      case "pause":
      case "abort": {
        const state = verb === "pause" ? "paused" : "aborted";
        const from = verb === "pause" ? (["running"] as const) : (["running", "paused"] as const);
        const by = whoOf(host, settings);
        if (!journal.setState(id, state, { by, now, from, ...(reason ? { reason } : {}) })) {
          host.stderr.write(`outpost: ${id} is ${r.state}: it cannot be ${state}\n`);
          return EXIT.FAILURE;
        }
        host.stdout.write(
          `${id}: ${state}${verb === "abort" ? " (committed devices stay; devices updating finish on their own)" : ""}\n`,
        );
        return EXIT.OK;
      }
      case "approve": {
        const next = journal.waves(id).find((w) => w.started === null);
        if (!next) {
          host.stderr.write(`outpost: every wave of ${id} has started\n`);
          return EXIT.FAILURE;
        }
        const by = whoOf(host, settings);
        journal.approve(id, next.wave, by, now);
        host.stdout.write(`${id}: wave ${next.wave + 1} approved\n`);
        return EXIT.OK;
      }
      default: {
        // resume: running again (a paused rollout, or a completed one with devices that were offline), then driven.
        const signer = signerOf(settings);
        if (r.state === "aborted") {
          host.stderr.write(`outpost: ${id} was aborted: make a new rollout\n`);
          return EXIT.FAILURE;
        }
        if (r.state !== "running") {
          // Resumed after a pause: the failures so far are accepted by the operator who resumed; the rules
          // judge what fails from now on (else the same failures would pause it again at once).
          if (r.state === "paused") journal.forgive(id, signer.by, now);
          journal.setState(id, "running", { by: signer.by, now, from: ["paused", "completed"] });
        }
        return await drive(host, settings, journal, id, signer, values.json === true);
      }
    }
  } finally {
    journal.close();
  }
}
