import { zstdDecompressSync } from "node:zlib";
import { errorMessage, isOutpostError, OutpostError } from "../core/errors.ts";
import type { ByteSource } from "./assemble.ts";

export interface HttpSourceOptions {
  /** The artifact's URL. */
  url: string;
  /** The size the signed manifest declares: a server that says otherwise is refused. */
  size: number;
  /** How long one range may take, headers to last byte. */
  timeoutMs: number;
  /** Where the release's compressed chunks are (`<base>chunks/`): fetched by hash before ranges. */
  chunks?: string;
}

/** Aborted after `ms`, or with `signal`. */
function within(ms: number, signal?: AbortSignal): AbortSignal {
  const timeout = AbortSignal.timeout(ms);
  return signal ? AbortSignal.any([signal, timeout]) : timeout;
}

/** The body of `res`, cut off past `max` bytes. */
async function bodyOf(res: Response, max: number, what: string): Promise<Uint8Array> {
  const out = new Uint8Array(max);
  let got = 0;
  const reader = res.body?.getReader();
  for (;;) {
    const { done, value } = (await reader?.read()) ?? { done: true, value: undefined };
    if (done) break;
    if (got + value.length > max) {
      await reader?.cancel();
      throw new OutpostError("OTA_SIZE_MISMATCH", `${what}: more bytes than the ${max} asked for`);
    }
    out.set(value, got);
    got += value.length;
  }
  return out.subarray(0, got);
}

/**
 * Ranges of an artifact over HTTP(S) with `Range` requests: 206 with a `Content-Range` whose total is the declared
 * size, and never more bytes than asked for (a server sending more is cut off). Resuming is the caller's: it asks
 * only for what it still lacks.
 */
export function httpSource(o: HttpSourceOptions): ByteSource {
  return {
    async read(offset, size, signal) {
      const both = within(o.timeoutMs, signal);
      try {
        const res = await fetch(o.url, { headers: { range: `bytes=${offset}-${offset + size - 1}` }, signal: both });
        if (res.status !== 206) {
          await res.body?.cancel();
          throw new OutpostError("OTA_DOWNLOAD_FAILED", `${o.url}: HTTP ${res.status} for a range request`);
        }
        const range = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(res.headers.get("content-range") ?? "");
        if (!range || Number(range[3]) !== o.size) {
          await res.body?.cancel();
          throw new OutpostError(
            "OTA_SIZE_MISMATCH",
            `${o.url}: the server's artifact has ${range?.[3] ?? "an unknown number of"} bytes, the manifest ${o.size}`,
          );
        }
        return await bodyOf(res, size, o.url);
      } catch (err) {
        if (isOutpostError(err)) throw err;
        throw new OutpostError("OTA_DOWNLOAD_FAILED", `${o.url}: ${errorMessage(err)}`, { cause: err });
      }
    },
    ...(o.chunks === undefined
      ? {}
      : { chunk: (sha256: string, size: number, signal?: AbortSignal) => chunkOf(o, sha256, size, signal) }),
  };
}

/**
 * One compressed chunk, `<chunks>/<sha256>.zst`, decompressed; undefined when it cannot be had that way (no
 * such file, another status, a page that is not zstd, a bomb, a timeout): the artifact's range serves it
 * instead. Never more than zstd's worst case for `size` bytes is read, nor more than `size` decompressed,
 * before the caller checks the hash: a bomb costs nothing.
 */
async function chunkOf(o: HttpSourceOptions, sha256: string, size: number, signal?: AbortSignal) {
  const url = `${o.chunks}${sha256}.zst`;
  const both = within(o.timeoutMs, signal);
  try {
    const res = await fetch(url, { signal: both });
    if (res.status !== 200) {
      await res.body?.cancel();
      return undefined;
    }
    return zstdDecompressSync(await bodyOf(res, size + (size >> 7) + 4096, url), { maxOutputLength: size });
  } catch {
    signal?.throwIfAborted();
    return undefined;
  }
}
