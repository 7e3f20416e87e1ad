// `outpost exit-record`: run by the unit's ExecStopPost= once the agent's process has ended, as the service
// user, to keep what systemd says of the ending for the next run (`ctl logs --previous`, docs/diagnostics.md).
import { parseArgs } from "node:util";
import { appendExitLine } from "../core/log-tail.ts";
import { LAYOUT } from "../service/unit.ts";
import { EXIT, type Host } from "./host.ts";
import { readRootView } from "./update-apply-command.ts";

/** systemd's words for the ending: short tokens (`success`, `watchdog`, `oom-kill`, `killed`, `KILL`, `75`). */
const token = (value: string | undefined) => (value === undefined ? null : value.slice(0, 32).replace(/[^\w.-]/g, "?"));

export function exitRecordCommand(host: Host, args: string[]): number {
  const { values } = parseArgs({ args, options: { config: { type: "string" } }, allowPositionals: false });
  const stateDir = readRootView(values.config ?? LAYOUT.config).state.dir;
  appendExitLine(stateDir, {
    result: token(host.env.SERVICE_RESULT),
    code: token(host.env.EXIT_CODE),
    status: token(host.env.EXIT_STATUS),
  });
  return EXIT.OK;
}
