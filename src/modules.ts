import { builtinsModule } from "./builtins/module.ts";
import { diagnosticsModule } from "./diagnostics/module.ts";
import { homeassistantModule } from "./homeassistant/module.ts";
import { observabilityModule } from "./observability/module.ts";
import { otaModule } from "./ota/module.ts";
import { resourcesModule } from "./resources/module.ts";
import { serviceModule } from "./service/module.ts";
import { tasksModule } from "./tasks/module.ts";
import { telemetryModule } from "./telemetry/module.ts";

/**
 * Every capability of the agent, in start order (stopped in reverse). A new capability is a folder with a
 * `Module` and one line here; nothing registers itself, so the bundler sees every import.
 */
// service is last: it tells systemd READY once the others have started, and STOPPING first when stopping.
export const MODULES = [
  builtinsModule,
  telemetryModule,
  resourcesModule,
  tasksModule,
  otaModule,
  observabilityModule,
  diagnosticsModule,
  homeassistantModule,
  serviceModule,
] as const;
