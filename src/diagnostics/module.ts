import { createHash } from "node:crypto";
import { join } from "node:path";
import { promisify } from "node:util";
import { getHeapStatistics } from "node:v8";
import { zstdCompress } from "node:zlib";
import { z } from "zod";
import { defineCommand } from "../commands/commands.ts";
import { liveSecrets, redact } from "../config/redact.ts";
import { memoryRoom } from "../core/cgroup-memory.ts";
import { errorMessage, OutpostError } from "../core/errors.ts";
import { LogScrubber } from "../core/log-scrub.ts";
import { EXIT_LINE_MSG, previousTail, readCapped } from "../core/log-tail.ts";
import { LOG_LEVELS } from "../core/logger.ts";
import { heapSnapshot, PROFILE_MS, profileThread } from "../core/profile.ts";
import { TokenBucket } from "../core/rate-limit.ts";
import type { Module, ModuleContext } from "../kernel/module.ts";
import { SEAL_SCHEME, seal } from "./seal.ts";

/** Ciphertext per chunk on `P/D/diag`: far under any broker's packet limit. */
export const DIAG_CHUNK_BYTES = 48 * 1024;
/** Diagnostics requests a device takes: a burst of 10, then one a second (a follow asks every 2 s). */
const RATE = { capacity: 10, perSecond: 1 };

const LEVELS = LOG_LEVELS.filter((l) => l !== "silent");
const rank = (level: string) => {
  const i = LEVELS.indexOf(level as (typeof LEVELS)[number]);
  // fatal is first in LOG_LEVELS: the higher the rank, the more severe.
  return i < 0 ? -1 : LEVELS.length - i;
};

/** The operator's ephemeral X25519 public key (32 bytes, base64): the answer is sealed to it. */
const recipient = z
  .string()
  .length(44)
  .refine((t) => Buffer.from(t, "base64").length === 32 && Buffer.from(t, "base64").toString("base64") === t, {
    message: "expected an X25519 public key: 32 bytes, base64",
  });

const profileParams = z.strictObject({
  to: recipient,
  kind: z.enum(["cpu", "heap"]),
  ms: z.number().int().min(PROFILE_MS.min).max(PROFILE_MS.max),
  /** A task worker (1: the first started) instead of the main thread. */
  worker: z.number().int().min(1).max(64).optional(),
});

const logsParams = z.strictObject({
  to: recipient,
  /** Only lines from the last this many milliseconds. */
  sinceMs: z.number().int().min(0).optional(),
  /** Only lines at this level or more severe. */
  level: z.enum(LEVELS).optional(),
  component: z.string().min(1).max(64).optional(),
  /** Only lines after this sequence number (a follow's last line): the answer says if some were dropped. */
  after: z.number().int().min(0).optional(),
  /** At most this many lines, the newest. */
  limit: z.number().int().min(1).max(100_000).optional(),
  /** The tail of the run before this one (state directory), and how it ended, instead of the ring. */
  previous: z.boolean().optional(),
});
type LogsParams = z.output<typeof logsParams>;

/** A ring line's fields that the filters read; a line that is not JSON passes only unfiltered. */
const lineFields = (text: string): { level?: string; time?: string; component?: string; msg?: string } => {
  try {
    return JSON.parse(text) as { level?: string; time?: string; component?: string; msg?: string };
  } catch {
    return {};
  }
};

/** The lines of the ring (or of the previous run's tail) a request asks for, each as `{"seq":N,...the line}`. */
export function selectLines(ctx: Pick<ModuleContext, "logs" | "clock">, p: LogsParams, from?: readonly string[]) {
  const { first, lines, dropped } = from
    ? { first: 1, lines: from.map((text, i) => ({ seq: i + 1, text })).slice(p.after ?? 0), dropped: 0 }
    : ctx.logs.read(p.after ?? 0);
  const since = p.sinceMs === undefined ? undefined : ctx.clock.now() - p.sinceMs;
  const min = p.level === undefined ? undefined : rank(p.level);
  let chosen = lines.filter(({ text }) => {
    if (since === undefined && min === undefined && p.component === undefined) return true;
    const f = lineFields(text);
    if (since !== undefined && !(Date.parse(f.time ?? "") >= since)) return false;
    if (min !== undefined && rank(f.level ?? "") < min) return false;
    return p.component === undefined || f.component === p.component;
  });
  if (p.limit !== undefined && chosen.length > p.limit) chosen = chosen.slice(-p.limit);
  const text = chosen.map(({ seq, text }) => (text.startsWith("{") ? `{"seq":${seq},${text.slice(1)}` : text));
  return {
    lines: text,
    first,
    last: chosen.at(-1)?.seq ?? null,
    // Where a follow goes on from: every line up to here was looked at, whether it matched or not.
    upTo: lines.at(-1)?.seq ?? Math.max(p.after ?? 0, first - 1),
    dropped,
    // A follow that last saw line `after` and finds the ring starting later missed what lies between.
    missed: p.after === undefined ? 0 : Math.max(0, first - p.after - 1),
  };
}

/**
 * How the previous run ended: systemd's word when the unit's ExecStopPost= added it to the tail (`result`:
 * success, exit-code, signal, watchdog, oom-kill...; `code`: exited, killed, dumped; `status`: a number or a
 * signal's name), otherwise what its last line says.
 */
export function howItEnded(lines: readonly string[]): Record<string, unknown> {
  const own = lines.filter((l) => lineFields(l).msg !== EXIT_LINE_MSG);
  const stopped = lineFields(own.at(-1) ?? "").msg === "agent stopped";
  const said = lines.findLast((l) => lineFields(l).msg === EXIT_LINE_MSG);
  if (said) {
    const f = lineFields(said) as Record<string, unknown>;
    const word = (k: string) => (typeof f[k] === "string" ? (f[k] as string).slice(0, 32) : null);
    return {
      by: "systemd",
      result: word("result"),
      code: word("code"),
      status: word("status"),
      at: word("time"),
      lastLine: stopped ? "agent stopped" : "no stop line",
    };
  }
  if (lines.length === 0) return { by: "none", note: "no previous run's tail in the state directory" };
  return stopped
    ? { by: "log", note: "stopped cleanly (its last line is the stop)" }
    : { by: "log", note: "ended without its stop line: killed, crashed or the power went" };
}

/** A heap snapshot's peak memory, in heaps (measured: the graph, the text and its copies, zstd, the chunks). */
const SNAPSHOT_FACTOR = 4;

/** Files of the state directory a bug report wants, raw (opaque text; their shapes are their modules'). */
const BUNDLE_FILES = ["update/journal.json", "runs.json"];

/**
 * What an operator attaches to a bug report (`ctl diag`): describe, the effective configuration redacted, the
 * ring's lines and the run before's tail with its ending, a /metrics snapshot, the update journal and the run
 * ledger. Scrubbed once more as a whole, with the logger's rules.
 */
export async function gatherBundle(ctx: ModuleContext): Promise<Record<string, unknown>> {
  const config = ctx.configStore.current().config;
  const previous = previousTail(ctx.stateDir);
  const bundle = {
    format: "outpost-diag-v1",
    at: new Date(ctx.clock.now()).toISOString(),
    describe: ctx.describe(),
    config: redact(config),
    metrics: await ctx.metrics.metrics(),
    logs: ctx.logs.read().lines.map((l) => l.text),
    previous: { lines: previous, ended: howItEnded(previous) },
    files: Object.fromEntries(BUNDLE_FILES.map((f) => [f, readCapped(join(ctx.stateDir, f), 256 * 1024) || null])),
  };
  const scrubbed = new LogScrubber(liveSecrets(ctx.configStore)).scrub(JSON.stringify(bundle));
  return JSON.parse(scrubbed) as Record<string, unknown>;
}

/**
 * Remote diagnostics (docs/diagnostics.md): the agent's recent log lines, sealed to the operator who asked
 * and sent in hash-checked chunks on `P/D/diag` through the direct channel (never the outbox); the signed final
 * reply names every chunk's sha256. One transfer at a time, rate-limited; nothing runs unless asked.
 */
export const diagnosticsModule: Module = {
  name: "diagnostics",
  create(ctx) {
    const bucket = new TokenBucket({ ...RATE, mono: () => ctx.clock.mono() });
    let busy = false;
    /** Seals `plain` to `to`, publishes its chunks and returns what the signed reply must say of them. */
    const send = async (id: string, to: string, plain: Buffer) => {
      const packed = Buffer.from(await promisify(zstdCompress)(plain));
      const sealed = seal(packed, to, { device: ctx.deviceId, request: id }, DIAG_CHUNK_BYTES);
      const count = sealed.chunks.length;
      for (const [index, chunk] of sealed.chunks.entries()) {
        const header = Buffer.from(`${JSON.stringify({ id, index, count })}\n`, "utf8");
        try {
          await ctx.direct.publish(ctx.topics.diag, Buffer.concat([header, chunk]));
        } catch (err) {
          throw new OutpostError("DIAG_SEND_FAILED", `chunk ${index} of ${count}: ${errorMessage(err)}`);
        }
      }
      return {
        scheme: SEAL_SCHEME,
        key: sealed.key,
        encoding: "zstd",
        size: plain.length,
        chunks: sealed.chunks.map((c) => ({ size: c.length, sha256: createHash("sha256").update(c).digest("hex") })),
      };
    };
    /** One transfer at a time, and a bucket of them: logs are cheap, but a flood of requests is not. */
    const transfer = async <T>(work: () => Promise<T>): Promise<T> => {
      if (busy) throw new OutpostError("DIAG_BUSY", "another diagnostics transfer is running");
      if (!bucket.take()) throw new OutpostError("DIAG_RATE_LIMITED", "at most one diagnostics request a second");
      busy = true;
      try {
        return await work();
      } finally {
        busy = false;
      }
    };
    return {
      commands: [
        defineCommand({
          name: "debug.logs",
          params: logsParams,
          changesState: false,
          run: (p, run) =>
            transfer(async () => {
              const previous = p.previous ? previousTail(ctx.stateDir) : undefined;
              const picked = selectLines(ctx, p, previous);
              const plain = Buffer.from(picked.lines.length > 0 ? `${picked.lines.join("\n")}\n` : "", "utf8");
              const { lines, ...rest } = picked;
              const ended = previous ? { ended: howItEnded(previous) } : {};
              const sealed = await send(run.id, p.to, plain);
              return { lines: lines.length, ...rest, ...ended, session: ctx.session, ...sealed };
            }),
        }),
        defineCommand({
          name: "debug.profile",
          params: profileParams,
          changesState: false,
          // One profile at a time (the transfer's): its own sampling and, on a worker, that worker's time.
          run: (p, run) =>
            transfer(async () => {
              const started = performance.now();
              let profile: unknown;
              if (p.worker === undefined) profile = await profileThread(p.kind, p.ms, run.signal);
              else {
                const workers = ctx.workers();
                if (!workers) throw new OutpostError("DIAG_NO_WORKER", "this agent runs no task workers");
                profile = await workers.profile(p.worker, p.kind, p.ms, run.signal);
              }
              const plain = Buffer.from(JSON.stringify(profile), "utf8");
              const thread = p.worker === undefined ? "main" : `worker ${p.worker}`;
              const tookMs = Math.round(performance.now() - started);
              return { kind: p.kind, thread, ms: p.ms, tookMs, ...(await send(run.id, p.to, plain)) };
            }),
        }),
        defineCommand({
          name: "debug.heap-snapshot",
          params: z.strictObject({ to: recipient }),
          changesState: false,
          run: (p, run) =>
            transfer(async () => {
              // V8 builds the snapshot's graph, the text is held and copied while it is scrubbed, then compressed
              // and sealed: about four times the heap at its peak (twice, the floor, was not enough). Within
              // the unit's limit as it stands now (its cgroup's), never the machine's free memory alone.
              const heap = getHeapStatistics().used_heap_size;
              const { room, limit, usage } = memoryRoom();
              if (room < SNAPSHOT_FACTOR * heap) {
                const mib = (n: number) => `${Math.round(n / 1024 / 1024)} MiB`;
                const within = limit === undefined ? "" : ` (limit ${mib(limit)}, in use ${mib(usage ?? 0)})`;
                const needed = mib(SNAPSHOT_FACTOR * heap);
                throw new OutpostError("DIAG_MEMORY_SHORT", `${mib(room)} free${within}, ${needed} needed`);
              }
              // The password the link still uses after a reload is in the heap too: the booted one as well.
              const scrubber = new LogScrubber(liveSecrets(ctx.configStore));
              const plain = Buffer.from(await heapSnapshot((s) => scrubber.scrubPiece(s)), "utf8");
              return { heapBytes: heap, ...(await send(run.id, p.to, plain)) };
            }),
        }),
        defineCommand({
          name: "debug.bundle",
          params: z.strictObject({ to: recipient }),
          changesState: false,
          run: (p, run) =>
            transfer(async () => {
              const bundle = await gatherBundle(ctx);
              const plain = Buffer.from(JSON.stringify(bundle), "utf8");
              return { parts: Object.keys(bundle), ...(await send(run.id, p.to, plain)) };
            }),
        }),
      ],
      describe: () => ({ logRing: ctx.logs.stats() }),
    };
  },
};
