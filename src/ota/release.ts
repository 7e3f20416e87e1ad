import { createHash, type KeyObject } from "node:crypto";
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { constants, zstdCompressSync } from "node:zlib";
import { elfMachineOf } from "../core/elf.ts";
import { OutpostError } from "../core/errors.ts";
import { releaseMarker } from "../version.ts";
import { chunk, DEFAULT_CHUNKS } from "./chunks.ts";
import { type ChunkIndex, type Manifest, type SignedManifest, signManifest } from "./manifest.ts";

/** An index up to this size rides in the manifest; a larger one is a file named by its hash. */
const INLINE_INDEX_MAX = 16 * 1024;

const ARCH: Record<string, "x64" | "arm64"> = { x86_64: "x64", aarch64: "arm64" };

export interface ReleaseOptions {
  file: string;
  privateKey: KeyObject;
  out: string;
  kind: "agent" | "model";
  /** A model's version (an agent's is read from the binary). */
  version?: string;
  minVersion?: string;
  allowDowngrade?: boolean;
  now: number;
  /**
   * The zstd level of `chunks/<sha256>.zst`, each chunk compressed alone for HTTP sources; 0 writes none.
   * Unset: 6, fast, for the tests and benches that make many releases; `outpost release` passes
   * RELEASE_ZSTD_LEVEL.
   */
  zstdLevel?: number;
}

/**
 * `outpost release`'s level for chunks/. A full x64 binary's chunks (122 MiB, 2 cores): level 6 54.9 MiB in
 * 1.4 s, 15 51.9 MiB in 14 s, 17 51.6 MiB in 22 s, 19 51.5 MiB in 41 s. A release is made once and fetched by
 * every device of a fleet, many on metered links: 3.3 MiB less a first install is worth 20 s on the machine that
 * makes it. Past 17 the bytes hardly move and the time doubles.
 */
export const RELEASE_ZSTD_LEVEL = 17;

/** Where a release's compressed chunks are, beside its artifact: served by any static server or CDN. */
export const CHUNKS_DIR = "chunks";

export interface Release {
  manifest: Manifest;
  signed: SignedManifest;
  /** The files written to `out`. */
  files: string[];
}

/**
 * Writes a release: the artifact, its chunk index (inline or beside it, named by its sha256) and the signed
 * `manifest.json`. An agent's version comes from the marker the build stamps into the binary and its arch from
 * the ELF header, so an arm64 release is made on an x64 host without running it.
 */
export function makeRelease(o: ReleaseOptions): Release {
  const bytes = readFileSync(o.file);
  let version: string;
  let arch: Manifest["target"]["arch"];
  let artifact: string;
  if (o.kind === "agent") {
    const marked = releaseMarker(bytes);
    const machine = elfMachineOf(bytes.subarray(0, 20));
    const mapped = machine === undefined ? undefined : ARCH[machine];
    if (!marked || !mapped) {
      throw new OutpostError(
        "OTA_MANIFEST_INVALID",
        `${o.file} is not an outpost binary (${marked ? `ELF machine ${machine ?? "none"}` : "no version marker"})`,
      );
    }
    if (o.version !== undefined && o.version !== marked) {
      throw new OutpostError("OTA_MANIFEST_INVALID", `--version ${o.version}, but the binary says ${marked}`);
    }
    version = marked;
    arch = mapped;
    artifact = `outpost-${version}-linux-${arch}`;
  } else {
    if (!o.version) throw new OutpostError("OTA_MANIFEST_INVALID", "a model release needs --version");
    version = o.version;
    arch = "any";
    artifact = basename(o.file);
  }
  const chunks = chunk(bytes, DEFAULT_CHUNKS);
  const index: ChunkIndex = { params: DEFAULT_CHUNKS, chunks: chunks.map((c) => [c.size, c.sha256]) };
  const indexText = JSON.stringify(index);
  mkdirSync(o.out, { recursive: true });
  const files = [artifact];
  copyFileSync(o.file, join(o.out, artifact));
  const level = o.zstdLevel ?? 6;
  if (level > 0) {
    // Named by content, so the releases of a rollout share one directory, and a chunk two releases have is one file.
    mkdirSync(join(o.out, CHUNKS_DIR), { recursive: true });
    for (const c of chunks) {
      const packed = zstdCompressSync(bytes.subarray(c.offset, c.offset + c.size), {
        params: { [constants.ZSTD_c_compressionLevel]: level },
      });
      writeFileSync(join(o.out, CHUNKS_DIR, `${c.sha256}.zst`), packed);
    }
    files.push(`${CHUNKS_DIR}/ (${new Set(chunks.map((c) => c.sha256)).size} files)`);
  }
  let indexRef: Manifest["index"] = index;
  if (indexText.length > INLINE_INDEX_MAX) {
    const sha256 = createHash("sha256").update(indexText).digest("hex");
    writeFileSync(join(o.out, `index-${sha256}.json`), indexText);
    files.push(`index-${sha256}.json`);
    indexRef = { sha256, size: Buffer.byteLength(indexText) };
  }
  const manifest: Manifest = {
    format: 1,
    kind: o.kind,
    artifact,
    version,
    target: { os: "linux", arch },
    sha256: createHash("sha256").update(bytes).digest("hex"),
    size: bytes.length,
    index: indexRef,
    ...(o.minVersion ? { minVersion: o.minVersion } : {}),
    allowDowngrade: o.allowDowngrade === true,
    created: o.now,
  };
  const signed = signManifest(manifest, o.privateKey);
  writeFileSync(join(o.out, "manifest.json"), `${JSON.stringify(signed, null, 2)}\n`);
  files.push("manifest.json");
  return { manifest, signed, files };
}
