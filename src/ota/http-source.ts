import { errorMessage, isOutpostError, OutpostError } from "../core/errors.ts";
import type { ByteSource } from "./assemble.ts";

export interface HttpSourceOptions {
  /** The artifact's URL. */
  url: string;
  /** The size the signed manifest declares: a server that says otherwise is refused. */
  size: number;
  /** How long one range may take, headers to last byte. */
  timeoutMs: number;
}

/**
 * Ranges of an artifact over HTTP(S) with `Range` requests: 206 with a `Content-Range` whose total is the declared
 * size, and never more bytes than asked for (a server sending more is cut off). Resuming is the caller's: it asks
 * only for what it still lacks.
 */
export function httpSource(o: HttpSourceOptions): ByteSource {
  return {
    async read(offset, size, signal) {
      const timeout = AbortSignal.timeout(o.timeoutMs);
      const both = signal ? AbortSignal.any([signal, timeout]) : timeout;
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
        const out = new Uint8Array(size);
        let got = 0;
        const reader = res.body?.getReader();
        for (;;) {
          const { done, value } = (await reader?.read()) ?? { done: true, value: undefined };
          if (done) break;
          if (got + value.length > size) {
            await reader?.cancel();
            throw new OutpostError("OTA_SIZE_MISMATCH", `${o.url}: more bytes than the ${size} asked for`);
          }
          out.set(value, got);
          got += value.length;
        }
        return out.subarray(0, got);
      } catch (err) {
        if (isOutpostError(err)) throw err;
        throw new OutpostError("OTA_DOWNLOAD_FAILED", `${o.url}: ${errorMessage(err)}`, { cause: err });
      }
    },
  };
}
