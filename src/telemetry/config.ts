import { z } from "zod";
import { duration, MAX_LIST } from "../config/schema.ts";
import { configSection } from "../kernel/module.ts";
import type { MetricPath } from "../kernel/telemetry-port.ts";

/** Interfaces left out unless configured otherwise: loopback, and the virtual ones of containers and shapers. */
export const SKIPPED_INTERFACES = ["lo", "veth*", "docker*", "br-*", "ifb*"];

const MiB = 1024 * 1024;

/**
 * The smallest change of a metric worth a message between full samples, by dotted path (`*` = any one
 * segment; the most specific rule wins; 0 = any change). `telemetry.deadbands` adds to these or overrides them.
 */
export const DEFAULT_DEADBANDS: Readonly<Record<string, number>> = {
  cpu: 5,
  temperature: 1,
  memory: 16 * MiB,
  load: 0.5,
  "disk.used": 64 * MiB,
  "disk.usePercent": 1,
  "statefs.used": 64 * MiB,
  "statefs.free": 64 * MiB,
  "statefs.usePercent": 1,
  "statefs.inodesFree": 1000,
  "diskio.*.readBytesPerS": MiB,
  "diskio.*.writeBytesPerS": MiB,
  "diskio.*.busyPercent": 10,
  // The resources module's collector: not the telemetry's shape, so its paths are not checked.
  ...{ "resources.rss": 16 * MiB, "resources.heapUsed": 16 * MiB, "resources.handles": 10 },
  "agent.rss": 16 * MiB,
  "agent.heapUsed": 16 * MiB,
  "outbox.queued": 100,
  "outbox.bytes": MiB,
  "pi.armClockMHz": 100,
  "jetson.gpu.loadPercent": 5,
  "jetson.gpu.clockMHz": 100,
  "jetson.cpuClockMHz": 100,
  "jetson.emcClockMHz": 100,
  "jetson.rails.*.volts": 0.1,
  "jetson.rails.*.amperes": 0.1,
  "jetson.rails.*.watts": 0.5,
} satisfies Partial<Record<MetricPath, number>>;

/** Counters that move on every sample: sent in full samples only. */
export const FULL_ONLY: MetricPath[] = [
  "uptime",
  "network",
  "agent.cpuUserMs",
  "agent.cpuSystemMs",
  "outbox.sent",
  "outbox.stored",
  "outbox.inflight",
  "outbox.fsyncs",
];

const path = z.string().regex(/^[A-Za-z0-9_*-]+(\.[A-Za-z0-9_*-]+)*$/, "expected a dotted metric path, e.g. cpu.load");

/** The telemetry module's section of the configuration. */
export const telemetrySection = configSection({
  key: "telemetry",
  schema: z
    .strictObject({
      interval: duration("10s", 50, 86_400_000),
      // A full sample at least this often; between them only what moved past its deadband. Set it to the
      // interval (or less) to send every sample in full.
      fullInterval: duration("5m", 50, 86_400_000),
      deadbands: z
        .record(path, z.number().min(0))
        .refine((r) => Object.keys(r).length <= MAX_LIST, { message: `expected at most ${MAX_LIST} entries` })
        .default({}),
      fullOnly: z
        .array(path)
        .max(MAX_LIST, { message: `expected at most ${MAX_LIST} items` })
        .default(FULL_ONLY),
      collectorTimeout: duration("2s", 50, 60_000),
      // Interfaces not reported: a name, or a prefix and "*". ppp*, wwan* and wg* are reported all the same.
      skipInterfaces: z
        .array(z.string().regex(/^[A-Za-z0-9._-]+\*?$|^\*$/, 'expected an interface name, "prefix*" or "*"'))
        .max(MAX_LIST, { message: `expected at most ${MAX_LIST} items` })
        .default(SKIPPED_INTERFACES),
      // Where /proc, /sys and the rest of the host are read: a fixture tree, or the host's own from a container.
      procRoot: z.string().min(1).default("/proc"),
      sysRoot: z.string().min(1).default("/sys"),
      hostRoot: z.string().min(1).default("/"),
      // The device's signature on each telemetry message too (docs/mqtt-api.md, "Signed answers"): about 33 µs
      // and 97 bytes a message. Off unless set, and with no default, so that a file without it hashes as before.
      sign: z.boolean().optional(),
    })
    .prefault({}),
  restartOnly: ["procRoot", "sysRoot", "hostRoot"],
});
