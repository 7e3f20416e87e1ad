import type { LevelWithSilent } from "pino";
import type { ConfigStore } from "./config/store.ts";
import type { Clock } from "./core/clock.ts";
import type { Logger } from "./core/logger.ts";
import { Kernel } from "./kernel/kernel.ts";
import type { Module } from "./kernel/module.ts";
import { MODULES } from "./modules.ts";

export interface AgentOptions {
  settings: ConfigStore;
  logger: Logger;
  /** Changes the level of the logger and all its children (log.level, config reload). */
  setLogLevel?: (level: LevelWithSilent) => void;
  clock: Clock;
  clockSynced?: () => boolean;
  /** The capabilities; `MODULES` unless a test adds its own. */
  modules?: readonly Module[];
  trace?: (step: string) => void;
}

/**
 * The composition root: the kernel (config store, MQTT link, outbox, replay guard, command router) with the
 * modules of `src/modules.ts`. Start and stop order are the kernel's (docs/architecture.md).
 */
export function createAgent(options: AgentOptions): Kernel {
  return new Kernel({ ...options, modules: options.modules ?? MODULES });
}

export type Agent = Kernel;
