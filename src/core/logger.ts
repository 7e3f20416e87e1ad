import { type DestinationStream, type LevelWithSilent, type Logger, pino } from "pino";
import { LogRing } from "./log-ring.ts";
import { LogScrubber } from "./log-scrub.ts";
import type { LogTail } from "./log-tail.ts";

export type { Logger };
export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
export type LogFormat = "json" | "pretty";

export interface LoggerOptions {
  level: LevelWithSilent;
  format: LogFormat;
  /** File descriptor to write to; stdout by default so that journald picks the lines up. */
  fd?: number;
  colorize?: boolean;
  /** The configuration's secret values now: no line carries them (log-scrub.ts). */
  secrets?: () => readonly string[];
  /** The bound of the ring of recent lines (`LogRing`), in characters of JSON; 1 MiB by default. */
  ringBytes?: number;
  /** Where this run's tail is kept for the next run (`LogTail`): every line, as written. */
  tail?: LogTail;
}

/** The ring's default bound: counted in the idle memory budget (docs/diagnostics.md). */
export const LOG_RING_BYTES = 1024 * 1024;

/**
 * pino writing synchronously-enough JSON lines to a file descriptor. No `pino.transport()`: it starts a
 * worker from a file path, which does not exist inside the single executable.
 */
export async function createLogger(
  options: LoggerOptions,
): Promise<{ logger: Logger; flush: () => void; setLevel: (level: LevelWithSilent) => void; ring: LogRing }> {
  const fd = options.fd ?? 1;
  let stream: DestinationStream & { flushSync?: () => void };
  if (options.format === "pretty") {
    // Loaded only when asked for: it costs memory that a service logging JSON to journald never needs.
    const { default: pretty } = await import("pino-pretty");
    stream = pretty({ destination: fd, sync: true, colorize: options.colorize === true });
  } else {
    stream = pino.destination({ dest: fd, sync: false, minLength: 0 });
  }
  // pino children copy the level when they are made; a level change must reach every one of them.
  const children = new Set<WeakRef<Logger>>();
  const scrubber = new LogScrubber(options.secrets ?? (() => []));
  const ring = new LogRing(options.ringBytes ?? LOG_RING_BYTES);
  const tail = options.tail;
  const logger = pino(
    {
      level: options.level,
      onChild: (child) => {
        children.add(new WeakRef(child));
      },
      base: undefined,
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      // Every line, whatever logged it, is scrubbed as written, and the ring keeps what was written.
      hooks: {
        streamWrite: (line) => {
          const clean = scrubber.scrub(line);
          ring.push(clean);
          if (tail && !tail.failed) {
            tail.write(clean);
            // Said where a reader looks (ctl logs): nothing may be logged from inside the logger.
            if (tail.failed) ring.push(JSON.stringify({ level: "error", msg: `the log tail stopped: ${tail.failed}` }));
          }
          return clean;
        },
      },
    },
    stream,
  );
  const flush = () => {
    try {
      stream.flushSync?.();
    } catch {
      // Flushing a closed or non-blocking descriptor can throw EAGAIN; losing the tail of a log is better
      // than failing a shutdown.
    }
  };
  const setLevel = (level: LevelWithSilent) => {
    logger.level = level;
    for (const ref of children) {
      const child = ref.deref();
      if (child) child.level = level;
      else children.delete(ref);
    }
  };
  return { logger, flush, setLevel, ring };
}
