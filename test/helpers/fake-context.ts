// Issue 24, item 6: a module's create() wiring tested alone, against fake peers (as thin-edge.io tests an actor):
// the outbox, the link and the clock are in memory; the configuration store, retained state, alarms, latest
// values and metrics are the kernel's own classes over them, so that what a module sees is what it gets.
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import pino from "pino";
import { Registry } from "prom-client";
import { stringify } from "yaml";
import type { CommandDefinition, RunContext } from "../../src/commands/commands.ts";
import type { ConfigStore } from "../../src/config/store.ts";
import { ManualClock } from "../../src/core/clock.ts";
import { LogRing } from "../../src/core/log-ring.ts";
import { Alarms } from "../../src/kernel/alarms.ts";
import type { HealthReport } from "../../src/kernel/health.ts";
import { LatestValues } from "../../src/kernel/latest.ts";
import type {
  ConfigSection,
  ModelHost,
  Module,
  ModuleContext,
  ModuleParts,
  SectionConfig,
} from "../../src/kernel/module.ts";
import { type RetainedLink, RetainedState } from "../../src/kernel/retained.ts";
import type { TelemetryPort } from "../../src/kernel/telemetry-port.ts";
import { adaptModules, sectionOf } from "../../src/kernel/wiring.ts";
import { deviceTopics } from "../../src/mqtt/topics.ts";
import type { Envelope, OutboxMessage } from "../../src/outbox/outbox.ts";
import { openConfigStore } from "../../src/schema.ts";
import { tempDir } from "./temp.ts";

export interface FakeOptions {
  /** The configuration file's content (its state.dir is set to a temporary directory). */
  config?: Record<string, unknown>;
  env?: Record<string, string>;
  device?: string;
  /** The kernel's health as the module sees it (a trial commits on ok). */
  health?: () => HealthReport;
  telemetry?: TelemetryPort;
  models?: ModelHost;
  /** The agent's recent log lines (an empty ring by default). */
  logs?: LogRing;
}

/** A module created against fakes, with what it did so far. */
export interface Fake<C> {
  ctx: ModuleContext<C>;
  parts: ModuleParts<C>;
  clock: ManualClock;
  store: ConfigStore;
  stateDir: string;
  /** Every message the module queued in the outbox, in order. */
  sent: OutboxMessage[];
  /** Each retained topic's last payload as published (null: cleared). */
  retained: Map<string, Record<string, unknown> | null>;
  /** Restarts the module asked for. */
  restarts: number[];
  /** What the module published on its direct channel, in order. */
  direct: { topic: string; payload: Buffer }[];
  /** The module's command, run as the router would run it (its params parsed first). */
  command(name: string, params: unknown, context?: Partial<RunContext>): Promise<unknown>;
  /** Applies a config.set patch and hands the module its new section, as the kernel does. */
  patch(patch: Record<string, unknown>): void;
  /** Removes the temporary state directory. */
  close(): void;
}

const healthy = (): HealthReport => ({ ok: true, reasons: [] });

export function fakeContext<S extends ConfigSection | undefined>(
  module: Module<S>,
  options: FakeOptions = {},
): Fake<SectionConfig<S>> {
  const stateDir = tempDir("outpost-fake-");
  const file = join(stateDir, "config.yaml");
  const device = options.device ?? "dev-fake";
  writeFileSync(file, stringify({ device: { id: device }, ...options.config, state: { dir: stateDir } }));
  const store = openConfigStore({ path: file, env: options.env ?? {}, hostname: "fake" });
  const logger = pino({ level: "silent" });
  const clock = new ManualClock(1_700_000_000_000);
  const topics = deviceTopics("outpost", device);
  const sent: OutboxMessage[] = [];
  const retainedTopics = new Map<string, Record<string, unknown> | null>();
  const link: RetainedLink = {
    connected: true,
    publish: async (topic, payload) => {
      retainedTopics.set(topic, payload === "" ? null : (JSON.parse(payload) as Record<string, unknown>));
    },
    on: () => undefined,
    off: () => undefined,
  };
  const retained = new RetainedState(link, logger);
  let seq = 0;
  const send = (message: OutboxMessage): Envelope => {
    sent.push(message);
    seq += 1;
    return { session: "fake-session", seq, ts: clock.now(), mono: clock.mono(), clockSynced: true };
  };
  const alarms = new Alarms({ send, retained, topics, clock });
  const restarts: number[] = [];
  const direct: { topic: string; payload: Buffer }[] = [];
  let parts: ModuleParts<SectionConfig<S>> | undefined;
  const ctx: ModuleContext<SectionConfig<S>> = {
    config: () => sectionOf(module, store.current()) as SectionConfig<S>,
    deviceId: device,
    stateDir,
    broker: "localhost:1883",
    configStore: store,
    clock,
    logger,
    session: "fake-session",
    topics,
    send,
    commit: () => {},
    retained,
    direct: {
      listen: () => {},
      publish: async (topic, payload) => {
        direct.push({ topic, payload: Buffer.from(payload) });
      },
    },
    alarm: (type, body) => alarms.raise(type, body),
    latest: new LatestValues((err) => {
      throw err;
    }),
    health: options.health ?? healthy,
    metrics: new Registry(),
    heartbeat: () => ({ beat: () => {} }),
    collectors: () => parts?.collectors ?? [],
    describe: () => ({ modules: { [module.name]: parts?.describe?.() ?? {} } }),
    restart: (delayMs) => {
      restarts.push(delayMs);
    },
    setLogLevel: (level) => ({ previous: "info", level }),
    logs: options.logs ?? new LogRing(0),
    env: options.env ?? {},
    vitals: () => ({ alive: healthy(), connected: true, queued: sent.length }),
    models: () => options.models,
    workers: () => undefined,
    telemetry: () => options.telemetry,
  };
  parts = module.create(ctx);
  const created = parts;
  return {
    ctx,
    parts: created,
    clock,
    store,
    stateDir,
    sent,
    retained: retainedTopics,
    restarts,
    direct,
    async command(name, params, context = {}) {
      const definition = (created.commands ?? []).find((c: CommandDefinition) => c.name === name);
      if (!definition) throw new Error(`${module.name} has no command ${name}`);
      const bound = definition.bind(params);
      if (!bound.ok) throw new Error(`BAD_PARAMS: ${bound.message}`);
      return bound.run({
        id: "req-1",
        progress: () => {},
        signal: new AbortController().signal,
        defer: () => ({ id: "req-1", command: name, topic: "reply" }),
        ...context,
      });
    },
    patch(patch) {
      const previous = store.current();
      const result = store.patch(patch, { trust: true });
      if (!result.ok) throw new Error(`config.set refused: ${JSON.stringify(result.problems)}`);
      adaptModules([{ module, parts: created }], result.snapshot, previous, logger);
    },
    close() {
      rmSync(stateDir, { recursive: true, force: true });
    },
  };
}
