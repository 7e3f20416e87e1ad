import { execFileSync } from "node:child_process";
import { createHash, type KeyObject } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { chunk, DEFAULT_CHUNKS } from "../../src/ota/chunks.ts";
import { type Manifest, type SignedManifest, signManifest } from "../../src/ota/manifest.ts";
import { releaseMarkerText, UNITS_MARKER } from "../../src/version.ts";
import { ROOT } from "./agent-process.ts";

/** This checkout built for x64 as another version (an app-only change); returns the binary's path. */
export function buildVersion(out: string, version: string): string {
  execFileSync(
    process.execPath,
    [join(ROOT, "build", "build.ts"), "--target", "linux-x64", "--out", out, "--set-version", version],
    { cwd: ROOT, stdio: ["ignore", "ignore", "inherit"] },
  );
  return join(out, "outpost-linux-x64");
}

/** Bytes that pass for an agent binary of `arch`: an ELF header, the build's version marker, a seeded body. */
export function fakeAgent(version: string, arch: "x64" | "arm64", size: number): Buffer {
  const elf = Buffer.alloc(64);
  elf.writeUInt32BE(0x7f454c46, 0);
  elf.writeUInt16LE(arch === "x64" ? 62 : 183, 18);
  const body = Buffer.alloc(size);
  for (let i = 0, b = 0; i < size; i += 32, b++) createHash("sha256").update(`agent-${b}`).digest().copy(body, i);
  return Buffer.concat([elf, Buffer.from(`outpost-release;version=${version};${UNITS_MARKER}`), body]);
}

/**
 * A release of a file that is no agent at all (a shell script running `body`), signed as an x64 agent of
 * `version`: what a broken build looks like to a device. Written to `out/artifact`.
 */
export function scriptRelease(out: string, version: string, body: string, key: KeyObject): SignedManifest {
  const bytes = Buffer.from(`#!/bin/sh\n# ${releaseMarkerText(version)} ${UNITS_MARKER}\n${body}\n`);
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, "artifact"), bytes);
  const manifest: Manifest = {
    format: 1,
    kind: "agent",
    artifact: "artifact",
    version,
    target: { os: "linux", arch: "x64" },
    sha256: createHash("sha256").update(bytes).digest("hex"),
    size: bytes.length,
    index: { params: DEFAULT_CHUNKS, chunks: chunk(bytes).map((c) => [c.size, c.sha256]) },
    allowDowngrade: false,
    created: Date.now(),
  };
  return signManifest(manifest, key);
}
