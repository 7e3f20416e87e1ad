import { z } from "zod";
import { LOG_LEVELS } from "../core/logger.ts";
import { BROKER_URL, DEVICE_ID, GROUP_NAME } from "../core/patterns.ts";
import { DURATION_PATTERN, formatDuration, parseDuration } from "./duration.ts";
import { markDuration, markSize } from "./schema-walk.ts";
import { parseSize, SIZE_PATTERN } from "./size.ts";

/**
 * A duration string with bounds, kept as text in the config so that it prints back as written; a module reads
 * its milliseconds from the typed view (schema-walk.ts).
 */
export function duration(def: string, minMs: number, maxMs: number) {
  const text = z
    .string({ error: 'expected a duration in quotes, like "10s" or "500ms" (a bare number has no unit)' })
    .regex(DURATION_PATTERN, 'expected a duration like "500ms", "10s", "5m", "1h"')
    .refine(
      (s) => {
        // undefined for the pattern's misses (the regex reports those) and for a number too large to hold.
        const ms = parseDuration(s);
        return DURATION_PATTERN.test(s) ? ms !== undefined && ms >= minMs && ms <= maxMs : true;
      },
      { message: `expected a duration between ${formatDuration(minMs)} and ${formatDuration(maxMs)}` },
    );
  return markDuration(text)
    .default(def)
    .brand<"duration">()
    .describe(`a duration: a number and ms, s, m, h or d, from ${formatDuration(minMs)} to ${formatDuration(maxMs)}`);
}

/** A size string like "64MiB", kept as text; the typed view holds its bytes. */
export function size(def: string, minBytes: number, maxBytes: number) {
  const text = z
    .string({ error: 'expected a size in quotes, like "64MiB" (a bare number has no unit)' })
    .regex(SIZE_PATTERN, 'expected a size like "512KiB", "64MiB", "1GiB"')
    .refine(
      (s) => {
        const bytes = parseSize(s);
        return SIZE_PATTERN.test(s) ? bytes !== undefined && bytes >= minBytes && bytes <= maxBytes : true;
      },
      { message: `expected a size of at least ${minBytes} bytes and at most ${maxBytes} bytes` },
    );
  return markSize(text)
    .default(def)
    .brand<"size">()
    .describe(`a size: a number and B, KiB, MiB, GiB (or KB, MB, GB), from ${minBytes} to ${maxBytes} bytes`);
}

/** Lists in the file are short; a cap keeps a corrupt or hostile file from taking the memory. */
export const MAX_LIST = 64;

const TOPIC_PREFIX = /^[^#+\s]+[^/#+\s]$|^[^#+/\s]$/;

// What `outpost keygen` writes to PREFIX.pub ("ed25519:" + base64 of 32 bytes), bare base64, or SPKI PEM.
const PUBLIC_KEY = /^(ed25519:)?[A-Za-z0-9+/]{43}=$|^-----BEGIN PUBLIC KEY-----[\s\S]+-----END PUBLIC KEY-----\s*$/;

/** An ed25519 public key as `outpost keygen` writes it (or bare base64, or PEM). */
export const publicKeySchema = z
  .string()
  .trim()
  .regex(PUBLIC_KEY, 'expected an ed25519 public key: the contents of a .pub file ("ed25519:" and base64)');

export const trustedKeySchema = z.strictObject({
  name: z.string().min(1),
  key: publicKeySchema,
  allow: z
    .array(z.string().regex(/^(\*|[a-z][a-z0-9.-]*(\.\*)?)$/, 'expected a command name, "family.*" or "*"'))
    .max(MAX_LIST, { message: `expected at most ${MAX_LIST} items` })
    .default(["*"]),
});

/**
 * The kernel's sections of the configuration: who the device is and where it connects (`kernelHead`), and
 * how it keeps state and takes commands (`kernelTail`). Each module adds its own section (`Module.config`);
 * `src/schema.ts` puts them between the two, so a config file reads in that order.
 */
export const kernelHead = {
  device: z
    .strictObject({
      id: z
        .string()
        .regex(DEVICE_ID, "expected 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit")
        .optional(),
      groups: z
        .array(
          z.string().regex(GROUP_NAME, "expected a group name of A-Z a-z 0-9 . _ - starting with a letter or digit"),
        )
        .max(MAX_LIST, { message: `expected at most ${MAX_LIST} items` })
        .default([]),
    })
    .prefault({}),
  mqtt: z
    .strictObject({
      url: z
        .string()
        .regex(BROKER_URL, "expected an mqtt:// or mqtts:// URL")
        .describe("the broker: mqtt://host[:port] or mqtts://host[:port] (TLS)")
        .default("mqtt://127.0.0.1:1883"),
      failover: z
        .array(z.string().regex(BROKER_URL, "expected an mqtt:// or mqtts:// URL"))
        .max(8, { message: "expected at most 8 URLs" })
        .describe("more brokers (the nodes of a cluster) to try in turn when the current one cannot be reached")
        // No default: a file without it hashes as before (a mixed fleet compares configHash).
        .optional(),
      protocolVersion: z
        .union([z.literal(5), z.literal(4)], {
          message: "expected 5 (MQTT 5, falls back to 3.1.1) or 4 (MQTT 3.1.1 only)",
        })
        .default(5),
      topicPrefix: z
        .string()
        .regex(TOPIC_PREFIX, "expected a topic prefix without wildcards, spaces or a trailing /")
        .default("outpost/v1"),
      clientId: z.string().min(1).max(128).optional(),
      username: z.string().optional(),
      password: z.string().optional(),
      passwordFile: z.string().optional(),
      ca: z.string().optional(),
      cert: z.string().optional(),
      key: z.string().optional(),
      rejectUnauthorized: z.boolean().default(true),
      keepalive: duration("30s", 5_000, 3_600_000),
      connectTimeout: duration("10s", 500, 120_000),
      reconnectMin: duration("1s", 10, 600_000),
      reconnectMax: duration("60s", 100, 3_600_000),
      // Announced in CONNECT (MQTT 5) and enforced on the socket: a larger incoming packet drops the connection
      // before it is buffered. Task inputs and update chunks must fit under it.
      maxPacketSize: size("2MiB", 16 * 1024, 128 * 1024 * 1024),
      // MQTT 5: the broker keeps the session (and the requests sent to it) this long while the device is away,
      // so a command sent during a short outage still arrives; "0s" means a clean session.
      sessionExpiry: duration("1h", 0, 7 * 86_400_000),
      // MQTT 3.1.1 sessions never expire: brokers would pile up group commands for dead devices. Off by default.
      persistentSession311: z.boolean().default(false),
    })
    .refine((m) => (parseDuration(m.reconnectMax) ?? 0) >= (parseDuration(m.reconnectMin) ?? 0), {
      message: "expected a duration at least mqtt.reconnectMin",
      path: ["reconnectMax"],
    })
    .refine((m) => m.password === undefined || m.passwordFile === undefined, {
      message: "expected at most one of password and passwordFile",
      path: ["passwordFile"],
    })
    .refine((m) => (m.cert === undefined) === (m.key === undefined), {
      message: "expected cert and key together (client certificate authentication)",
      path: ["key"],
    })
    .prefault({}),
};

export const kernelTail = {
  outbox: z
    .strictObject({
      maxBytes: size("64MiB", 64 * 1024, 64 * 1024 ** 3),
      ttl: duration("7d", 60_000, 365 * 86_400_000),
      commitInterval: duration("1s", 10, 60_000),
      commitMessages: z.number().int().min(1).max(100_000).default(1000),
      window: z.number().int().min(1).max(65_535).default(64),
      maxPacketSize: z.number().int().min(128).optional(),
    })
    .prefault({}),
  state: z.strictObject({ dir: z.string().min(1).default("/var/lib/outpost") }).prefault({}),
  log: z
    .strictObject({
      level: z.enum(LOG_LEVELS).default("info"),
      format: z.enum(["json", "pretty"]).default("json"),
    })
    .prefault({}),
  commands: z
    .strictObject({
      trustedKeys: z
        .array(trustedKeySchema)
        .max(MAX_LIST, { message: `expected at most ${MAX_LIST} items` })
        .default([]),
      allowUnsigned: z.boolean().default(false),
      clockSkew: duration("30s", 0, 3_600_000),
      maxValidity: duration("10m", 1_000, 86_400_000),
    })
    .prefault({}),
  shutdown: z.strictObject({ deadline: duration("10s", 100, 600_000) }).prefault({}),
};

/** Kernel keys that components read once at start: a new value is stored, and used after the next restart. */
export const KERNEL_RESTART_ONLY = ["device", "mqtt", "outbox", "state", "log.format"];
/**
 * Kernel keys `config.set` may not change: a typo there would leave the device unreachable (mqtt) or lose its
 * state (state.dir, device.id) with nobody on site to fix it, and the command policy would let a key
 * widen itself (allowUnsigned, or a skew and validity long enough to replay). They change in the file.
 */
export const KERNEL_LOCAL_ONLY = [
  "device",
  "mqtt",
  "state",
  "commands.allowUnsigned",
  "commands.clockSkew",
  "commands.maxValidity",
];
/**
 * Keys that decide who may command the device: changed remotely only by a key whose allow list names
 * `trust.*` explicitly (never implied by `*` or `config.*`).
 */
export const TRUST_KEYS = ["commands.trustedKeys"];

/** Key names whose values a problem line never shows (wherever they are: a problem line may err on the safe side). */
export const SECRET_KEYS = new Set(["password"]);

/** Where the configuration holds a secret: redacted by path, so that a deadband or a task named "password" is not. */
export const SECRET_PATHS: readonly (readonly string[])[] = [["mqtt", "password"]];
