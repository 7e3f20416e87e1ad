import { z } from "zod";
import { type LoadedConfig, type LoadOptions, loadConfig } from "./config/load.ts";
import type { ConfigModel } from "./config/model.ts";
import { KERNEL_LOCAL_ONLY, KERNEL_RESTART_ONLY, kernelHead, kernelTail } from "./config/schema.ts";
import { ConfigStore, type StoreOptions } from "./config/store.ts";
import type { ConfigSection } from "./kernel/module.ts";
import { MODULES } from "./modules.ts";

type Modules = typeof MODULES;
/** The modules' sections as a zod shape, keyed by each module's `config.key`. */
type Section<M> = M extends { config?: infer S } ? NonNullable<S> : never;
type ModuleShape = {
  [M in Modules[number] as Section<M> extends ConfigSection ? Section<M>["key"] : never]: Section<M>["schema"];
};

function moduleShape(): ModuleShape {
  const shape: Record<string, z.ZodType> = {};
  for (const m of MODULES as readonly { config?: ConfigSection }[]) if (m.config) shape[m.config.key] = m.config.schema;
  return shape as ModuleShape;
}

/** The whole configuration file: the kernel's sections, then each module's. Unknown keys are errors. */
export const configSchema = z.strictObject({ ...kernelHead, ...moduleShape(), ...kernelTail });

export type ConfigInput = z.input<typeof configSchema>;
export type ParsedConfig = z.output<typeof configSchema>;

/** The effective configuration: schema defaults applied, the device id resolved, secrets read. */
export type Config = ParsedConfig & { device: { id: string } };

const sections = (MODULES as readonly { config?: ConfigSection }[]).flatMap((m) => (m.config ? [m.config] : []));
const qualified = (s: ConfigSection, paths: readonly string[] | undefined) =>
  (paths ?? []).map((p) => (p === "" ? s.key : `${s.key}.${p}`));

/** Keys read once at start: a new value is stored, and used after the next restart. */
export const RESTART_KEYS: readonly string[] = [
  ...KERNEL_RESTART_ONLY,
  ...sections.flatMap((s) => qualified(s, s.restartOnly)),
];
/** Keys `config.set` may never change. */
export const LOCAL_ONLY_KEYS: readonly string[] = [
  ...KERNEL_LOCAL_ONLY,
  ...sections.flatMap((s) => qualified(s, s.localOnly)),
];

/** The configuration as the loader and the store see it (handed in: config/ does not import the modules). */
export const CONFIG_MODEL: ConfigModel = {
  schema: configSchema,
  restartKeys: RESTART_KEYS,
  localOnlyKeys: LOCAL_ONLY_KEYS,
};

export function configJsonSchema(): unknown {
  return z.toJSONSchema(configSchema, { io: "input", unrepresentable: "any" });
}

/** Loads a configuration file with the agent's model (see loadConfig). */
export function loadAgentConfig(options: Omit<LoadOptions, "model">): LoadedConfig {
  return loadConfig({ ...options, model: CONFIG_MODEL });
}

/** The agent's configuration store (see ConfigStore). */
export function openConfigStore(options: Omit<StoreOptions, "model">): ConfigStore {
  return new ConfigStore({ ...options, model: CONFIG_MODEL });
}
