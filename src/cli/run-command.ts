import { Agent } from "../agent.ts";
import { durationMs } from "../config/duration.ts";
import { systemClock } from "../core/clock.ts";
import { OutpostError } from "../core/errors.ts";
import { withDeadline } from "../core/lifecycle.ts";
import { createLogger, type LogFormat } from "../core/logger.ts";
import { loadOrReport } from "./config-command.ts";
import { EXIT, type Host } from "./host.ts";

export interface RunOptions {
  config?: string;
  logFormat?: LogFormat;
}

/** `outpost run`: the agent in the foreground until a stop signal, then a drain under the deadline. */
export async function runCommand(host: Host, options: RunOptions): Promise<number> {
  const loaded = loadOrReport(host, options.config);
  if (typeof loaded === "number") return loaded;
  const { config } = loaded;
  const { logger, flush } = await createLogger({
    level: config.log.level,
    format: options.logFormat ?? config.log.format,
    colorize: host.stdout.isTTY === true,
  });
  const agent = new Agent({ config, configHash: loaded.hash, logger, clock: systemClock });
  try {
    await agent.start();
    const signal = await host.stopRequested;
    logger.info({ signal }, "stop requested");
    const deadline = durationMs(config.shutdown.deadline);
    await withDeadline(
      agent.stop(Math.floor(deadline / 2)),
      deadline,
      () => new OutpostError("SHUTDOWN_DEADLINE", `shutdown took longer than ${config.shutdown.deadline}`),
    );
    return EXIT.OK;
  } catch (err) {
    logger.fatal({ err }, "agent failed");
    return EXIT.FAILURE;
  } finally {
    flush();
  }
}
