import { builtinsModule } from "./builtins/module.ts";
import { telemetryModule } from "./telemetry/module.ts";

/**
 * Every capability of the agent, in start order (stopped in reverse). A new capability is a folder with a
 * `Module` and one line here; nothing registers itself, so the bundler sees every import.
 */
export const MODULES = [builtinsModule, telemetryModule] as const;
