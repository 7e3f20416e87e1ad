import { randomUUID } from "node:crypto";
import { zstdDecompressSync } from "node:zlib";
import { z } from "zod";
import { errorMessage, OutpostError } from "../core/errors.ts";
import type { DirectChannel } from "../kernel/module.ts";
import type { ByteSource } from "./assemble.ts";

/**
 * The MQTT transport of an update, for sites where devices reach only the broker. The device asks for one
 * byte range at a time on `P/D/update/get`; `outpost ctl update` answers on `P/D/update/data` with a JSON
 * header line and the bytes. Nothing goes through the outbox: a lost request is simply asked again, and what
 * was received stays in the partial file, so a cut transfer resumes where it stopped.
 */
export const chunkRequestSchema = z.strictObject({
  id: z.string().max(64),
  /** The release's sha256 (from its manifest): the server answers only for the release it serves. */
  release: z.string().regex(/^[0-9a-f]{64}$/),
  file: z.enum(["artifact", "index"]),
  offset: z.number().int().min(0),
  size: z
    .number()
    .int()
    .min(1)
    .max(4 * 1024 * 1024),
});
export type ChunkRequest = z.output<typeof chunkRequestSchema>;

/**
 * A request whose id starts with this says that the device takes zstd answers. Said in the id, because a
 * server from before (ctl up to issue 26) refuses a request with any other field; such a server answers raw,
 * and a device from before never asks so, so it is always answered raw.
 */
export const ZSTD_ID = "z:";

const answerHeader = z.union([
  z.strictObject({ id: z.string(), offset: z.number(), size: z.number() }),
  // The bytes after the header are `size` bytes compressed with zstd (only to a request whose id says ZSTD_ID).
  z.strictObject({ id: z.string(), offset: z.number(), size: z.number(), encoding: z.literal("zstd") }),
  z.strictObject({ id: z.string(), error: z.string() }),
]);

/** The largest range asked for at once: a message a broker takes (mosquitto's default has no limit). */
export const MQTT_MAX_RANGE = 1024 * 1024;

/** Header line, then the bytes. */
export function encodeAnswer(header: z.input<typeof answerHeader>, bytes?: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from(`${JSON.stringify(header)}\n`), bytes ?? Buffer.alloc(0)]);
}

/**
 * One range asked for. Anyone on the broker can publish on the data topic, so nothing an answer says is
 * believed by itself: bytes that fail `accept` (their chunks' hashes) and error answers are dropped and
 * remembered for the timeout's message; only the range timeout fails the range.
 */
type Waiter = {
  size: number;
  resolve(bytes: Buffer): void;
  accept(bytes: Buffer): boolean;
  dropped: string[];
  /** Compressed answers decoded so far: each costs up to `size` bytes of work, so only a few are. */
  decoded: number;
};

/**
 * Compressed answers decoded per request. A few bytes of zstd can decode to the whole range (1 MiB of work
 * for a 38-byte message): past this, compressed answers are dropped unread, and the next try asks raw, where an
 * answer costs its sender every byte it makes the device hash.
 */
const DECODES = 2;

/** Thrown by a try that dropped compressed answers it could not decode: the next one asks raw. */
class CompressedJunk extends Error {}

export class MqttFetcher {
  private readonly waiting = new Map<string, Waiter>();
  private readonly channel: DirectChannel;
  private readonly requestTopic: string;

  /** Listens from `create` on: the subscription is made on every connect. */
  constructor(channel: DirectChannel, topics: { updateGet: string; updateData: string }) {
    this.channel = channel;
    this.requestTopic = topics.updateGet;
    channel.listen(topics.updateData, (payload) => this.onAnswer(payload));
  }

  private onAnswer(payload: Buffer): void {
    const end = payload.indexOf(0x0a);
    if (end < 0) return;
    let header: z.output<typeof answerHeader> | undefined;
    try {
      const parsed = answerHeader.safeParse(JSON.parse(payload.subarray(0, end).toString("utf8")));
      header = parsed.success ? parsed.data : undefined;
    } catch {
      header = undefined;
    }
    if (!header) return;
    const waiter = this.waiting.get(header.id);
    if (!waiter) return; // an answer to a request given up on, or to another device's
    // What was dropped is kept for the failure's message, 16 at most; the genuine answer is still taken after a
    // flood of junk (a cap that stopped listening let anyone who reads update/get block the download).
    const drop = (why: string) => {
      if (waiter.dropped.length < 16) waiter.dropped.push(why);
    };
    if ("error" in header) {
      drop(`an error answer ${JSON.stringify(header.error.slice(0, 200))}`);
      return;
    }
    let bytes = payload.subarray(end + 1);
    if ("encoding" in header) {
      if (waiter.decoded >= DECODES) {
        drop("a compressed answer past the few decoded per request");
        return;
      }
      waiter.decoded += 1;
      // Never more than the range asked for (what the signed index declares) is decompressed, before any hash:
      // a zstd bomb from whoever can publish here stops at that size, at once.
      try {
        bytes = zstdDecompressSync(bytes, { maxOutputLength: waiter.size });
      } catch {
        drop(`${bytes.length} compressed bytes that do not decompress to ${waiter.size}`);
        return;
      }
    }
    if (!waiter.accept(bytes)) {
      drop(`${bytes.length} bytes that fail their hashes`);
      return;
    }
    waiter.resolve(bytes);
  }

  /** A byte source for one file of a release; each range is asked up to `attempts` times. */
  source(o: { release: string; file: "artifact" | "index"; timeoutMs: number; attempts?: number }): ByteSource {
    return {
      read: async (offset, size, signal, accept) => {
        const attempts = o.attempts ?? 3;
        let last: unknown;
        let zstd = true;
        for (let attempt = 1; attempt <= attempts; attempt++) {
          signal?.throwIfAborted();
          try {
            return await this.ask(
              { id: `${zstd ? ZSTD_ID : ""}${randomUUID()}`, release: o.release, file: o.file, offset, size },
              (b) => b.length === size && (accept?.(b) ?? true),
              o,
              signal,
            );
          } catch (err) {
            last = err;
            if (signal?.aborted) throw err;
            if ((err as { cause?: unknown }).cause instanceof CompressedJunk) zstd = false;
          }
        }
        throw new OutpostError(
          "OTA_DOWNLOAD_FAILED",
          `no answer over MQTT for ${o.file} at ${offset}: ${errorMessage(last)}`,
          {
            cause: last,
          },
        );
      },
    };
  }

  private ask(
    request: ChunkRequest,
    accept: (bytes: Buffer) => boolean,
    o: { timeoutMs: number },
    signal?: AbortSignal,
  ): Promise<Buffer> {
    const dropped: string[] = [];
    return new Promise<Buffer>((resolve, reject) => {
      const finish = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        this.waiting.delete(request.id);
      };
      const onAbort = () => {
        finish();
        reject(signal?.reason ?? new Error("aborted"));
      };
      const waiter: Waiter = {
        size: request.size,
        decoded: 0,
        resolve: (b) => {
          finish();
          resolve(b);
        },
        accept,
        dropped,
      };
      const timer = setTimeout(() => {
        finish();
        const why = dropped.length > 0 ? ` (${dropped.length} answers dropped: ${dropped.join("; ")})` : "";
        // A compressed answer came and none was right: the next try asks raw.
        const junk = waiter.decoded > 0 ? { cause: new CompressedJunk() } : {};
        reject(new OutpostError("OTA_DOWNLOAD_FAILED", `no answer within ${o.timeoutMs} ms${why}`, junk));
      }, o.timeoutMs);
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiting.set(request.id, waiter);
      this.channel.publish(this.requestTopic, JSON.stringify(request)).catch((err: unknown) => {
        finish();
        reject(err);
      });
    });
  }
}
