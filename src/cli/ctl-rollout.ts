// `outpost ctl rollout` (issue 26): so far the plan, `--dry-run`. The driver that runs it (the journal, the
// waves, pause and resume) is being built; without --dry-run the command says so and does nothing.
import { randomBytes } from "node:crypto";
import { parseArgs } from "node:util";
import { parseDuration } from "../config/duration.ts";
import { errorMessage } from "../core/errors.ts";
import { BROKER_FLAGS, brokerOptions, ctlSettings } from "./ctl-settings.ts";
import { knownDevices } from "./ctl-trust.ts";
import { readManifest } from "./ctl-update.ts";
import { EXIT, type Host, UsageError } from "./host.ts";
import { brokerId } from "./known-devices.ts";
import { DEFAULT_POLICY, DEFAULT_WAVES, parseWaves, planWaves, type RolloutPolicy } from "./rollout-plan.ts";

const FLAGS = {
  ...BROKER_FLAGS,
  "dry-run": { type: "boolean" },
  devices: { type: "string" },
  "all-pinned": { type: "boolean" },
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
} as const;

function share(flag: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const m = /^(\d+(?:\.\d+)?)%$/.exec(text);
  const value = m ? Number(m[1]) / 100 : Number.NaN;
  if (!(value >= 0 && value <= 1)) throw new UsageError(`--${flag} must be a percentage like 95%, not ${text}`);
  return value;
}

function duration(flag: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const ms = parseDuration(text);
  if (ms === undefined || ms <= 0) throw new UsageError(`--${flag} must be a duration like 5m, not ${text}`);
  return ms;
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
 * `ctl rollout RELEASE_DIR... (--devices A,B,... | --all-pinned) --dry-run [--waves 1,10%,50%,100%] [--seed S]
 * [--canary D]... [--success 95%] [--soak 5m] [--failure 5%] [--min-finished 3] [--deadline 30m] [--cap N]
 * [--approve]`: the plan the rollout would freeze, printed (or as JSON).
 */
export function rolloutCommand(host: Host, args: string[]): number {
  const { values, positionals } = parseArgs({ args, options: FLAGS, allowPositionals: true });
  if (positionals.length === 0) throw new UsageError("ctl rollout: expected RELEASE_DIR... (one per architecture)");
  const releases = positionals.map((dir) => ({ dir, ...readManifest(dir).manifest }));
  const arches = releases.map((r) => r.target.arch);
  if (new Set(arches).size !== arches.length) {
    throw new UsageError("ctl rollout: one release per architecture (two name the same one)");
  }
  const settings = ctlSettings(host, values);
  const o = brokerOptions(settings);
  let devices: string[];
  if (values.devices !== undefined && !values["all-pinned"]) {
    devices = values.devices.split(",").map((d) => d.trim());
    if (devices.some((d) => d === "")) throw new UsageError("--devices: expected A,B,...");
  } else if (values["all-pinned"] && values.devices === undefined) {
    const broker = brokerId(o.url);
    devices = knownDevices(settings)
      .all()
      .filter((p) => p.prefix === o.prefix && (p.broker === broker || p.broker === "*"))
      .map((p) => p.device);
  } else {
    throw new UsageError("ctl rollout: the target is --devices A,B,... or --all-pinned");
  }
  let policy: RolloutPolicy;
  try {
    policy = {
      ...DEFAULT_POLICY,
      waves: parseWaves(values.waves ?? DEFAULT_WAVES),
      seed: values.seed ?? randomBytes(8).toString("hex"),
      canaries: values.canary ?? [],
      success: share("success", values.success, DEFAULT_POLICY.success),
      soakMs: duration("soak", values.soak, DEFAULT_POLICY.soakMs),
      failure: share("failure", values.failure, DEFAULT_POLICY.failure),
      minFinished: count("min-finished", values["min-finished"]) ?? DEFAULT_POLICY.minFinished,
      deadlineMs: duration("deadline", values.deadline, DEFAULT_POLICY.deadlineMs),
      ...(values.cap === undefined ? {} : { cap: count("cap", values.cap) }),
      approval: values.approve === true,
    };
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`ctl rollout: ${errorMessage(err)}`);
  }
  let plan: ReturnType<typeof planWaves>;
  try {
    plan = planWaves(devices, policy);
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
  if (!values["dry-run"]) {
    host.stderr.write("outpost: ctl rollout runs only --dry-run so far: the driver is being built (issue 26)\n");
    return EXIT.USAGE;
  }
  return EXIT.OK;
}
