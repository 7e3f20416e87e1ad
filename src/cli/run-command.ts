import { createAgent } from "../agent.ts";
import { formatDuration } from "../config/duration.ts";
import { formatProblems } from "../config/load.ts";
import { liveSecrets } from "../config/redact.ts";
import { stateDirProblem } from "../config/state-dir.ts";
import { systemClock } from "../core/clock.ts";
import { OutpostError } from "../core/errors.ts";
import { withDeadline } from "../core/lifecycle.ts";
import { LogTail } from "../core/log-tail.ts";
import { createLogger, type LogFormat } from "../core/logger.ts";
import { openConfig } from "./config-command.ts";
import { EXIT, type Host } from "./host.ts";

export interface RunCommandOptions {
  config?: string;
  logFormat?: LogFormat;
}

/**
 * `outpost run`: the agent in the foreground until a stop signal (exit 0) or the `restart` command (exit 75),
 * then a drain under the deadline. SIGHUP and changes of the config file reload the configuration.
 */
export async function runCommand(host: Host, options: RunCommandOptions): Promise<number> {
  const configStore = openConfig(host, options.config);
  if (typeof configStore === "number") return configStore;
  const { config } = configStore.current();
  // Without its state directory the agent would run without durability: say what to do, in one line.
  const stateProblem = stateDirProblem(config.state.dir, { create: true });
  if (stateProblem) {
    host.stderr.write(`outpost: ${stateProblem}\n`);
    return EXIT.CONFIG;
  }
  const { logger, flush, setLevel, ring } = await createLogger({
    level: config.log.level,
    format: options.logFormat ?? config.log.format,
    colorize: host.stdout.isTTY === true,
    secrets: liveSecrets(configStore),
    // The run before's tail becomes the previous one here, before this run writes a line.
    tail: LogTail.open(config.state.dir),
  });
  configStore.useLogger(logger.child({ component: "config" }));
  if (configStore.overrideProblems.length > 0) {
    logger.error(
      { problems: formatProblems(configStore.overrideProblems) },
      "stored config.set overrides are invalid and ignored",
    );
  }
  const agent = createAgent({
    configStore,
    logger,
    setLogLevel: setLevel,
    logRing: ring,
    clock: systemClock,
    env: host.env,
  });
  const watching = new AbortController();
  const unhook = host.onHangup(() => configStore.reload("SIGHUP"));
  try {
    await agent.start();
    void configStore.watchFile(watching.signal);
    const reason = await Promise.race([host.stopRequested, agent.restartRequested.then(() => "restart")]);
    logger.info({ reason }, "stop requested");
    watching.abort();
    // The kernel owns the budget and keeps part of it for the commit and `offline`; this is the last resort
    // for a closing step that hangs all the same.
    const { deadline } = configStore.current().typed.shutdown;
    await withDeadline(
      agent.stop(deadline),
      deadline,
      () => new OutpostError("SHUTDOWN_DEADLINE", `shutdown took longer than ${formatDuration(deadline)}`),
    );
    return reason === "restart" ? EXIT.RESTART : EXIT.OK;
  } catch (err) {
    logger.fatal({ err }, "agent failed");
    return EXIT.FAILURE;
  } finally {
    watching.abort();
    unhook();
    flush();
  }
}
