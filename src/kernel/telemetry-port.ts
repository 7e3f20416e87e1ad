import type { PathsBelow } from "../core/types.ts";
import type { OutboxStats } from "../outbox/types.ts";

export type BoardKind = "raspberry-pi" | "jetson" | "x86" | "other";

/** What the agent runs on, as reported in `describe` and the status message. */
export interface Board {
  kind: BoardKind;
  /** Human-readable model: the device tree's `model`, or the DMI vendor and product. */
  model: string;
  /** Device-tree `compatible` strings, most specific first (empty on x86). */
  compatible: string[];
  /** Jetson Linux (L4T) release, e.g. `36.3.0`, from /etc/nv_tegra_release. */
  l4t?: string;
  /** Which files said so. */
  source: string[];
}

/** The Pi firmware's throttling flags (`vcgencmd get_throttled`). */
export interface ThrottleFlags {
  underVoltage: boolean;
  armFrequencyCapped: boolean;
  throttled: boolean;
  softTempLimit: boolean;
}

export interface PiMetrics {
  /** What holds now; only `underVoltage` where the kernel exposes the rpi_volt hwmon alone. */
  now?: Partial<ThrottleFlags>;
  sinceBoot?: ThrottleFlags;
  armClockMHz?: number;
}

export interface Rail {
  volts: number;
  amperes: number;
  watts: number;
}

export interface JetsonMetrics {
  gpu?: { loadPercent?: number; clockMHz?: number };
  /** Keyed by core (`cpu0`...): nvpmodel modes switch cores off. */
  cpuClockMHz?: Record<string, number>;
  emcClockMHz?: number;
  /** INA3221 rails by label. */
  rails?: Record<string, Rail>;
  powerMode?: { id: number; name?: string };
}

/**
 * The figures the telemetry module's own collectors report, one top-level key per collector (other modules'
 * collectors add theirs beside them). The collectors return these types, and every reader elsewhere names a
 * figure by a MetricPath: renaming a field here fails to compile on both sides.
 */
export interface DeviceMetrics {
  cpu: { load: number; cores: number[] };
  memory: { total: number; used: number; available: number; swapTotal: number; swapUsed: number };
  disk: { mount: string; size: number; used: number; usePercent: number };
  /** °C per thermal zone, and `cpu`: the hottest CPU-like zone. */
  temperature: Record<string, number>;
  network: Record<string, { rxBytes: number; txBytes: number }>;
  uptime: { seconds: number };
  load: { "1m": number; "5m": number; "15m": number };
  diskio: Record<string, { readBytesPerS: number; writeBytesPerS: number; busyPercent: number }>;
  statefs: { path: string; size: number; used: number; free: number; usePercent: number; inodesFree: number };
  restarts: { starts: number; unclean: number };
  pi: PiMetrics;
  jetson: JetsonMetrics;
}

/** The kernel's own collectors, sampled beside the device's. */
export interface KernelMetrics {
  agent: { rss: number; heapUsed: number; cpuUserMs: number; cpuSystemMs: number };
  outbox: OutboxStats;
  commands: { received: number; executed: number; refused: number; suppressed: number };
}

/** A dotted path to one of the figures of a sample (`memory.used`, `jetson.rails.${string}.watts`). */
export type MetricPath = PathsBelow<DeviceMetrics & KernelMetrics>;

/** What the telemetry module offers the others (the pattern of ModelHost): the board, and the sampling pace. */
export interface TelemetryPort {
  /** Detected once at start. */
  board(): Board;
  /** `telemetry.interval` now, in milliseconds. */
  intervalMs(): number;
  /** How long ago the last sample was taken (ms); null before the first. */
  lastSampleAgeMs(): number | null;
  /** `telemetry.sign` now: whether the device signs its telemetry messages (the kernel's outbox does). */
  signed(): boolean;
}
