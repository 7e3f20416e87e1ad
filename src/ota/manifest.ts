import { createPublicKey, type KeyObject, sign, verify } from "node:crypto";
import { z } from "zod";
import { signedEnvelopeSchema } from "../commands/envelope.ts";
import { parsePublicKey, publicKeyText } from "../commands/keys.ts";
import { OutpostError } from "../core/errors.ts";
import { SEMVER } from "../version.ts";

/**
 * What a release is signed over: its own context, so that no signed command can pass for a manifest (or the
 * other way round), then the payload's exact bytes (no canonical JSON needed in any language).
 */
export const RELEASE_CONTEXT = "outpost-release-v1\n";

const SHA256 = /^[0-9a-f]{64}$/;

const chunkParams = z.strictObject({
  min: z.number().int().positive(),
  avg: z.number().int().positive(),
  max: z.number().int().positive(),
});

/** The chunk index: each chunk's size and sha256, in file order (offsets are the running sum). */
export const chunkIndexSchema = z.strictObject({
  params: chunkParams,
  chunks: z.array(z.tuple([z.number().int().positive(), z.string().regex(SHA256)])),
});
export type ChunkIndex = z.output<typeof chunkIndexSchema>;

export const manifestSchema = z.strictObject({
  format: z.literal(1),
  kind: z.enum(["agent", "model"]),
  /** The artifact's file name beside the manifest (HTTP) or the name the chunks are served under (MQTT). */
  artifact: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/),
  version: z.string().regex(SEMVER, "expected a semver"),
  target: z.strictObject({ os: z.literal("linux"), arch: z.enum(["x64", "arm64", "any"]) }),
  sha256: z.string().regex(SHA256),
  size: z.number().int().positive(),
  /** The index inline when it is small; otherwise named by hash and fetched like a chunk. */
  index: z.union([chunkIndexSchema, z.strictObject({ sha256: z.string().regex(SHA256), size: z.number().int() })]),
  /** The oldest version this release may replace; older devices must take an intermediate release first. */
  minVersion: z.string().regex(SEMVER).optional(),
  /** A downgrade is refused unless the signed manifest says so. */
  allowDowngrade: z.boolean().default(false),
  created: z.number().int().nonnegative(),
});
export type Manifest = z.output<typeof manifestSchema>;

/** The same envelope as a signed command's; only the signing context differs. */
export const signedManifestSchema = signedEnvelopeSchema;
export type SignedManifest = z.output<typeof signedManifestSchema>;

const signedBytes = (payload: string) => Buffer.from(RELEASE_CONTEXT + payload, "utf8");

export function signManifest(manifest: Manifest, privateKey: KeyObject): SignedManifest {
  const payload = JSON.stringify(manifest);
  const key = publicKeyText(createPublicKey(privateKey));
  return { payload, key, sig: sign(null, signedBytes(payload), privateKey).toString("base64") };
}

/**
 * Checks a signed manifest against the device's release keys (`update.trustedKeys`, apart from the command
 * keys): the signer must be trusted, the signature must verify, and only then is the payload parsed.
 */
export function verifyManifest(raw: unknown, trustedKeys: readonly string[]): Manifest {
  const envelope = signedManifestSchema.safeParse(raw);
  if (!envelope.success) throw new OutpostError("OTA_MANIFEST_INVALID", "expected {payload, key, sig}");
  const { payload, key, sig } = envelope.data;
  let signer: KeyObject;
  try {
    signer = parsePublicKey(key);
  } catch {
    throw new OutpostError("OTA_MANIFEST_INVALID", "the manifest's key is not an ed25519 public key");
  }
  const text = publicKeyText(signer);
  const same = (k: string) => {
    try {
      return publicKeyText(parsePublicKey(k)) === text;
    } catch {
      return false;
    }
  };
  if (!trustedKeys.some(same)) {
    throw new OutpostError("OTA_KEY_UNTRUSTED", `signed by ${text}, which is not in update.trustedKeys`);
  }
  const signature = Buffer.from(sig, "base64");
  if (signature.length !== 64 || !verify(null, signedBytes(payload), signer, signature)) {
    throw new OutpostError("OTA_SIGNATURE_INVALID", "the signature does not verify over the manifest");
  }
  let json: unknown;
  try {
    json = JSON.parse(payload);
  } catch {
    throw new OutpostError("OTA_MANIFEST_INVALID", "the signed payload is not JSON");
  }
  const parsed = manifestSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new OutpostError("OTA_MANIFEST_INVALID", `${issue?.path.join(".") || "manifest"}: ${issue?.message ?? ""}`);
  }
  return parsed.data;
}
