import { createHash } from "node:crypto";
import { z } from "zod";
import { OutpostError } from "../core/errors.ts";
import type { ByteSource } from "./assemble.ts";
import { httpSource } from "./http-source.ts";
import { type ChunkIndex, chunkIndexSchema, type Manifest, signedManifestSchema } from "./manifest.ts";
import { MQTT_MAX_RANGE, type MqttFetcher } from "./mqtt-source.ts";
import { CHUNKS_DIR } from "./release.ts";
import { rolloutId } from "./rollouts.ts";

// What an `update` command names, and where its release's files come from.

/** The `update` command's parameters. */
export const updateParams = z.strictObject({
  manifest: signedManifestSchema,
  /**
   * Where the release's files are: over HTTP(S), the artifact and its index beside it at this base URL; over
   * MQTT, asked for range by range from whoever serves the release (`outpost ctl update`).
   */
  source: z.union([
    z.strictObject({ http: z.url({ protocol: /^https?$/ }) }),
    z.strictObject({ mqtt: z.literal(true) }),
  ]),
  /** For a model release: the task whose model it replaces. */
  task: z
    .string()
    .regex(/^[A-Za-z0-9_.-]{1,64}$/)
    .optional(),
  /**
   * "staged": the operator wants the release staged and no more (`ctl update --until staged`), so an agent
   * without the installer stages it and ends there. An installed agent installs it all the same.
   */
  until: z.literal("staged").optional(),
  /**
   * The rollout this request belongs to (`outpost ctl rollout`): the device records it before acting, and
   * answers a later request of the same rollout and release from that record (rollouts.ts).
   */
  rollout: rolloutId.optional(),
});

export type UpdateParams = z.output<typeof updateParams>;

/** The release's two files, from where the request says they are (over MQTT: asked of `ctl update`). */
export function releaseSources(
  m: Manifest,
  source: UpdateParams["source"],
  o: { fetcher: MqttFetcher; timeoutMs: number },
) {
  const { fetcher, timeoutMs } = o;
  if ("mqtt" in source) {
    const from = (file: "artifact" | "index") => fetcher.source({ release: m.sha256, file, timeoutMs });
    return { artifact: from("artifact"), index: from("index"), maxRange: MQTT_MAX_RANGE };
  }
  const base = source.http.endsWith("/") ? source.http : `${source.http}/`;
  const at = (name: string, size: number) => httpSource({ url: new URL(name, base).href, size, timeoutMs });
  const ref = "chunks" in m.index ? undefined : m.index;
  return {
    artifact: httpSource({
      url: new URL(m.artifact, base).href,
      size: m.size,
      timeoutMs,
      chunks: new URL(`${CHUNKS_DIR}/`, base).href,
    }),
    index: ref ? at(`index-${ref.sha256}.json`, ref.size) : undefined,
    maxRange: undefined,
  };
}

/** The chunk index: inline in the manifest, or a file named by its hash (`source`: where it is). */
export async function chunkIndex(
  m: Manifest,
  source: ByteSource | undefined,
  signal: AbortSignal,
): Promise<ChunkIndex> {
  if ("chunks" in m.index) return m.index;
  const ref = m.index;
  if (!source) throw new OutpostError("OTA_MANIFEST_INVALID", "the chunk index has no source");
  // Fetched like a chunk: never more bytes than the signed manifest declares, checked against its sha256.
  const bytes = await source.read(
    0,
    ref.size,
    signal,
    (b) => createHash("sha256").update(b).digest("hex") === ref.sha256,
  );
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
