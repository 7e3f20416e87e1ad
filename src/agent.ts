import { Kernel, type KernelOptions } from "./kernel/kernel.ts";
import type { Module } from "./kernel/module.ts";
import { MODULES } from "./modules.ts";

/** The kernel's options; the modules are `MODULES` unless a test adds its own. */
export type AgentOptions = Omit<KernelOptions, "modules"> & { modules?: readonly Module[] };

/**
 * The composition root: the kernel (config store, MQTT link, outbox, replay guard, command router) with the
 * modules of `src/modules.ts`. Start and stop order are the kernel's (docs/architecture.md).
 */
export function createAgent(options: AgentOptions): Kernel {
  return new Kernel({ ...options, modules: options.modules ?? MODULES });
}

export type Agent = Kernel;
