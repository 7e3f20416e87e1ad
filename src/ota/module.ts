import { createHash } from "node:crypto";
import { mkdirSync } from "node:fs";
import { statfs } from "node:fs/promises";
import { join } from "node:path";
import * as sea from "node:sea";
import { z } from "zod";
import { durationMs } from "../config/duration.ts";
import { parseSize } from "../config/size.ts";
import { errorMessage, isOutpostError, OutpostError } from "../core/errors.ts";
import type { Module } from "../kernel/module.ts";
import { VERSION } from "../version.ts";
import { type AssembleProgress, assemble } from "./assemble.ts";
import { checkRelease } from "./checks.ts";
import { updateSection } from "./config.ts";
import { httpSource } from "./http-source.ts";
import { type ChunkIndex, chunkIndexSchema, type Manifest, signedManifestSchema, verifyManifest } from "./manifest.ts";

const updateParams = z.strictObject({
  manifest: signedManifestSchema,
  /** Where the release's files are: the artifact and its index beside it. */
  source: z.strictObject({ http: z.url({ protocol: /^https?$/ }) }),
});

/** An update's request carries the manifest and its source; its index may be 150 KB beside it. */
const MAX_UPDATE_REQUEST = 256 * 1024;

/**
 * Over-the-air updates (issue 13, in progress; docs/ota.md): the `update` command checks a signed release,
 * fetches only the chunks the running binary lacks, and stages the verified file in `state.dir/update/`.
 * Installing it, the trial, commit and rollback are not built yet.
 */
export const otaModule: Module<typeof updateSection> = {
  name: "ota",
  config: updateSection,
  create(ctx) {
    let busy = false;
    let last: Record<string, unknown> = { state: "idle" };
    const stageDir = () => join(ctx.config().state.dir, "update");
    const report = (body: Record<string, unknown>) => {
      last = body;
      ctx.retained.set(ctx.topics.update, { ...body, ts: ctx.clock.now() });
    };

    async function index(m: Manifest, base: string, signal: AbortSignal): Promise<ChunkIndex> {
      if ("chunks" in m.index) return m.index;
      const ref = m.index;
      // Fetched like a chunk: never more bytes than the signed manifest declares, checked against its sha256.
      const source = httpSource({
        url: new URL(`index-${ref.sha256}.json`, base).href,
        size: ref.size,
        timeoutMs: durationMs(ctx.config().update.rangeTimeout),
      });
      const bytes = await source.read(0, ref.size, signal);
      if (createHash("sha256").update(bytes).digest("hex") !== ref.sha256) {
        throw new OutpostError("OTA_CHUNK_CORRUPT", "the chunk index does not match its sha256");
      }
      let json: unknown;
      try {
        json = JSON.parse(Buffer.from(bytes).toString("utf8"));
      } catch {
        json = undefined;
      }
      const parsed = chunkIndexSchema.safeParse(json);
      if (!parsed.success) throw new OutpostError("OTA_MANIFEST_INVALID", "the chunk index is malformed");
      return parsed.data;
    }

    return {
      commands: [
        {
          name: "update",
          params: updateParams,
          maxRequestBytes: MAX_UPDATE_REQUEST,
          run: async (params, context) => {
            const p = params as z.output<typeof updateParams>;
            if (busy) throw new OutpostError("OTA_BUSY", "an update is already running");
            busy = true;
            const started = ctx.clock.mono();
            let manifest: Manifest | undefined;
            try {
              const config = ctx.config().update;
              manifest = verifyManifest(p.manifest, config.trustedKeys);
              const st = await statfs(ctx.config().state.dir);
              checkRelease(manifest, {
                version: VERSION,
                arch: process.arch,
                freeBytes: st.bavail * st.bsize,
                maxSize: parseSize(config.maxSize) ?? 0,
              });
              const m = manifest;
              const base = p.source.http.endsWith("/") ? p.source.http : `${p.source.http}/`;
              mkdirSync(stageDir(), { recursive: true, mode: 0o700 });
              const every = durationMs(config.progressInterval);
              let lastReport = Number.NEGATIVE_INFINITY;
              const onProgress = (pr: AssembleProgress) => {
                const now = ctx.clock.mono();
                if (now - lastReport < every && pr.done < pr.size) return;
                lastReport = now;
                const body = { state: "downloading", version: m.version, ...pr };
                report(body);
                context.progress(body);
              };
              report({ state: "downloading", version: m.version, done: 0, size: m.size });
              const result = await assemble({
                sha256: m.sha256,
                size: m.size,
                index: await index(m, base, context.signal),
                // The running binary is where most chunks are; from a checkout there is none to reuse.
                ...(sea.isSea() ? { current: process.execPath } : {}),
                source: httpSource({
                  url: new URL(m.artifact, base).href,
                  size: m.size,
                  timeoutMs: durationMs(config.rangeTimeout),
                }),
                partial: join(stageDir(), `${m.sha256}.partial`),
                ready: join(stageDir(), `${m.sha256}.ready`),
                signal: context.signal,
                onProgress,
              });
              const done = {
                state: "staged",
                version: m.version,
                sha256: m.sha256,
                size: m.size,
                fetched: result.fetched,
                reused: result.reused,
                resumed: result.resumed,
                seconds: Math.round(ctx.clock.mono() - started) / 1000,
              };
              report(done);
              ctx.logger.info(done, "update staged (installing it is not built yet)");
              return done;
            } catch (err) {
              const code = isOutpostError(err) ? err.code : "OTA_DOWNLOAD_FAILED";
              report({
                state: "failed",
                ...(manifest ? { version: manifest.version } : {}),
                code,
                reason: errorMessage(err),
              });
              throw err;
            } finally {
              busy = false;
            }
          },
        },
      ],
      describe: () => ({ version: VERSION, trustedKeys: ctx.config().update.trustedKeys.length, last }),
    };
  },
};
