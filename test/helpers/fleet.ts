// A fleet simulator (issue 26, part B): N devices in one process, each running the real agent code (the
// kernel, outbox, replay guard, commands, telemetry and the OTA module) with its own id, state directory,
// device key, broker connection and running release. Only what root and systemd do is simulated: a scripted
// installer per device that takes the staged release (as outpost-update.service would), writes root's
// records and "restarts the service" by stopping the device's kernel and starting a new one as the release
// it switched to; its outcome is set per device. Not real: one process's memory, event loop and CPU are shared
// by all devices (a slow device slows the others); the binary is never executed; the board tree is this
// machine's unless the fleet is given board fixtures (each device then reads its own copy); every device says
// it is x64 (the status's `arch` is this process's); the status's `version` is this checkout's (the OTA
// module's is the simulated release's). A crash is simulated by cutting the device's connection without a
// farewell and dropping its kernel: its files stay, as a killed process's do.
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import pino from "pino";
import { stringify } from "yaml";
import { createAgent } from "../../src/agent.ts";
import { parsePrivateKey } from "../../src/commands/keys.ts";
import { systemClock } from "../../src/core/clock.ts";
import type { Kernel } from "../../src/kernel/kernel.ts";
import { MODULES } from "../../src/modules.ts";
import { otaModuleFor } from "../../src/ota/module.ts";
import { makeRelease } from "../../src/ota/release.ts";
import { rolloutsFile } from "../../src/ota/rollouts.ts";
import type { RunningRelease } from "../../src/ota/running.ts";
import { openConfigStore } from "../../src/schema.ts";
import { releaseName } from "../../src/version.ts";
import { fakeAgent } from "./releases.ts";

/**
 * What happens to a device given a release: root's installer commits it, rolls it back (the new release fails
 * at its start), never answers (hang), or takes `slowMs` first; or the agent crashes once it took the
 * rollout's request (killed, as the OOM killer or a power cut would: no offline status, so the broker publishes
 * its will) and is started again `crashRestartMs` later, then commits.
 */
export type Outcome = "commit" | "rollback" | "hang" | "slow" | "crash";

export interface FleetOptions {
  dir: string;
  brokerUrl: string;
  /** The operator's public key (ed25519:...), allowed every command. */
  operatorKey: string;
  /** The release key (PEM or ed25519:...) the devices trust. */
  releaseKey: string;
  /** The release every device runs at start: its version and sha256. */
  running: { version: string; sha256: string };
  /** Extra configuration for every device. */
  config?: Record<string, unknown>;
  /**
   * Board fixtures (test/fixtures/boards: pi4, pi5, jetson-orin-nano, x86), handed out in turn: each device gets
   * its own copy of its tree and reads its telemetry and board from it. None: this machine's board, shared.
   */
  boards?: readonly string[];
}

const ROOT_WAIT_MS = 150;
const BOARDS = join(import.meta.dirname, "..", "fixtures", "boards");

export class SimDevice {
  readonly id: string;
  readonly dir: string;
  readonly stateDir: string;
  readonly records: string;
  outcome: Outcome = "commit";
  /** With "slow": how long root's installer takes before it commits like "commit". */
  slowMs = 6000;
  /** With "crash": how long the device stays down. */
  crashRestartMs = 1000;
  /** Crashes so far. */
  crashes = 0;
  /** With "crash": the rollout record's mtime when the outcome was first seen. */
  private crashArmed: number | undefined;
  /** The release it runs (`<version>-<sha12>`) and its version. */
  release: { name: string; version: string };
  /** Each install root performed, by release name: a device must never install a rollout's release twice. */
  readonly installs = new Map<string, number>();
  private kernel: Kernel | undefined;
  private installer: Promise<void> | undefined;
  private stopped = false;

  constructor(id: string, o: FleetOptions, index = 0) {
    this.id = id;
    this.dir = join(o.dir, id);
    this.stateDir = join(this.dir, "state");
    this.records = join(this.dir, "records");
    mkdirSync(this.records, { recursive: true });
    this.release = { name: releaseName(o.running.version, o.running.sha256), version: o.running.version };
    const board = o.boards?.length ? o.boards[index % o.boards.length] : undefined;
    let roots = {};
    if (board !== undefined) {
      const tree = join(this.dir, "board");
      cpSync(join(BOARDS, board), tree, { recursive: true });
      roots = { procRoot: join(tree, "proc"), sysRoot: join(tree, "sys"), hostRoot: join(tree, "host") };
    }
    writeFileSync(
      join(this.dir, "config.yaml"),
      stringify({
        device: { id, groups: ["sim"] },
        mqtt: { url: o.brokerUrl, reconnectMin: "100ms", reconnectMax: "2s" },
        telemetry: { interval: "1h", fullInterval: "1h", ...roots },
        state: { dir: this.stateDir },
        commands: { trustedKeys: [{ name: "ops", key: o.operatorKey, allow: ["*"] }] },
        update: { trustedKeys: [o.releaseKey], progressInterval: "1s", rangeTimeout: "3s", trialTimeout: "2m" },
        ...o.config,
      }),
    );
  }

  get publicKeyFile(): string {
    return join(this.stateDir, "device.pub");
  }

  get online(): boolean {
    return this.kernel !== undefined;
  }

  private running(): RunningRelease {
    const { name, version } = this.release;
    return {
      version,
      release: name,
      binary: undefined,
      records: this.records,
      unitsRevision: () => 3,
      noInstaller: () => undefined,
      arch: "x64",
    };
  }

  /** Starts the device's agent (a service start) and its simulated installer. */
  async start(): Promise<void> {
    if (this.kernel) return;
    this.stopped = false;
    const configStore = openConfigStore({ path: join(this.dir, "config.yaml"), env: {}, hostname: "sim" });
    const modules = MODULES.map((m) => (m.name === "ota" ? otaModuleFor(() => this.running()) : m));
    const kernel = createAgent({ configStore, logger: pino({ level: "silent" }), clock: systemClock, modules });
    this.kernel = kernel;
    await kernel.start();
    this.installer ??= this.installLoop();
  }

  /** Whether its agent is connected to the broker now. */
  get connected(): boolean {
    return this.kernel?.link.connected === true;
  }

  /** Stops the agent (a service stop: offline published); the installer too unless `restart`. */
  async stop(restart = false): Promise<void> {
    const kernel = this.kernel;
    this.kernel = undefined;
    if (!restart) this.stopped = true;
    await kernel?.stop(5000);
    if (!restart) {
      await this.installer;
      this.installer = undefined;
    }
  }

  /** Root's installer and systemd, scripted: polls for the agent's requests as the .path units would. */
  private async installLoop(): Promise<void> {
    const update = join(this.stateDir, "update");
    while (!this.stopped) {
      await new Promise((r) => setTimeout(r, ROOT_WAIT_MS));
      try {
        // Armed when first seen: the crash comes once a rollout's request is recorded after that.
        if (this.outcome === "crash" && this.kernel) {
          const recorded = mtimeOf(rolloutsFile(this.stateDir));
          this.crashArmed ??= recorded;
          if (recorded > this.crashArmed) {
            this.crashArmed = undefined;
            await this.crash();
            continue;
          }
        }
        if (existsSync(join(update, "commit.request"))) this.commit(update);
        if (existsSync(join(update, "rollback.request"))) await this.rollback(update);
        if (existsSync(join(update, "install.json")) && this.kernel) await this.install(update);
      } catch {
        // A half-written request: read again at the next turn, as root's unit would run again.
      }
    }
  }

  /**
   * The agent dies between two of its own steps: its connection is cut without a farewell (the broker publishes
   * the will), and what it had in memory is gone; its files stay. systemd starts it again.
   */
  private async crash(): Promise<void> {
    const kernel = this.kernel;
    this.kernel = undefined;
    this.crashes += 1;
    this.outcome = "commit";
    // The link's socket is private to it: a test reaches in, as a kill would, to cut it without a word.
    const link = kernel?.link as unknown as { client?: { stream?: { destroy(): void } } } | undefined;
    link?.client?.stream?.destroy();
    for (const until = Date.now() + 2000; kernel?.link.connected && Date.now() < until; ) {
      await new Promise((r) => setTimeout(r, 5));
    }
    await kernel?.stop(100);
    await new Promise((r) => setTimeout(r, this.crashRestartMs));
    if (!this.stopped) await this.start();
  }

  private commit(update: string): void {
    const trial = JSON.parse(readFileSync(join(this.records, "trial.json"), "utf8"));
    if (trial.state === "trial") {
      writeFileSync(join(this.records, "trial.json"), JSON.stringify({ ...trial, state: "committed", at: Date.now() }));
    }
    rmSync(join(update, "commit.request"), { force: true });
  }

  /** The rollback unit, on the agent's word that its trial failed: switch back and restart. */
  private async rollback(update: string): Promise<void> {
    const trial = JSON.parse(readFileSync(join(this.records, "trial.json"), "utf8"));
    rmSync(join(update, "rollback.request"), { force: true });
    if (trial.state !== "trial") return;
    const reason = "the agent asked for it: its trial failed";
    writeFileSync(
      join(this.records, "trial.json"),
      JSON.stringify({ ...trial, state: "rolled-back", reason, at: Date.now() }),
    );
    await this.stop(true);
    this.release = { ...trial.from };
    if (!this.stopped) await this.start();
  }

  private async install(update: string): Promise<void> {
    if (this.outcome === "hang") return;
    if (this.outcome === "slow") await new Promise((r) => setTimeout(r, this.slowMs));
    const request = JSON.parse(readFileSync(join(update, "install.json"), "utf8"));
    const manifest = JSON.parse(request.manifest.payload);
    const to = { name: releaseName(manifest.version, manifest.sha256), version: manifest.version };
    const from = { ...this.release };
    this.installs.set(to.name, (this.installs.get(to.name) ?? 0) + 1);
    const base = { release: to.name, from, to, since: Date.now(), request: request.id };
    writeFileSync(
      join(this.records, "request.json"),
      JSON.stringify({
        request: request.id,
        state: "installed",
        release: to.name,
        version: to.version,
        at: Date.now(),
      }),
    );
    writeFileSync(join(this.records, "trial.json"), JSON.stringify({ state: "trial", ...base }));
    rmSync(join(update, "install.json"), { force: true });
    rmSync(join(update, request.ready), { force: true });
    await this.stop(true);
    if (this.outcome === "rollback") {
      // The new release fails at its start (before any health gate): systemd's OnFailure= switches back.
      writeFileSync(
        join(this.records, "trial.json"),
        JSON.stringify({
          state: "rolled-back",
          ...base,
          reason: "the service failed: exit-code (simulated)",
          at: Date.now(),
        }),
      );
    } else this.release = to;
    if (!this.stopped) await this.start();
  }
}

/** A file's mtime in ms, 0 when there is none. */
function mtimeOf(path: string): number {
  return statSync(path, { throwIfNoEntry: false })?.mtimeMs ?? 0;
}

/** A release of a fake x64 agent of `version` (96 KiB) in `dir/rel-<version>`, signed with `privatePem`. */
export function fleetRelease(dir: string, version: string, privatePem: string): { dir: string; name: string } {
  const file = join(dir, `agent-${version}`);
  writeFileSync(file, fakeAgent(version, "x64", 96 * 1024));
  const out = join(dir, `rel-${version}`);
  const r = makeRelease({ file, privateKey: parsePrivateKey(privatePem), out, kind: "agent", now: 1 });
  return { dir: out, name: releaseName(version, r.manifest.sha256) };
}

export class Fleet {
  readonly devices: SimDevice[];

  constructor(ids: string[], o: FleetOptions) {
    this.devices = ids.map((id, i) => new SimDevice(id, o, i));
  }

  device(id: string): SimDevice {
    const d = this.devices.find((x) => x.id === id);
    if (!d) throw new Error(`no simulated device ${id}`);
    return d;
  }

  /**
   * Starts the devices a few at a time, each batch connected before the next starts: a thousand connects at
   * once from one event loop time out and reconnect in a storm (a real fleet's devices each have their own).
   */
  async start(filter: (d: SimDevice) => boolean = () => true): Promise<void> {
    const todo = this.devices.filter(filter);
    for (let i = 0; i < todo.length; i += 10) {
      const batch = todo.slice(i, i + 10);
      await Promise.all(batch.map((d) => d.start()));
      for (const until = Date.now() + 60_000; !batch.every((d) => d.connected) && Date.now() < until; ) {
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }

  async stop(): Promise<void> {
    await Promise.all(this.devices.map((d) => d.stop()));
  }
}
