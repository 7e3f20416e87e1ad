import pkg from "../package.json" with { type: "json" };

// Replaced by the build (esbuild `define`); a run from source says "dev".
declare const __OUTPOST_COMMIT__: string | undefined;
// `outpost-release;version=<semver>;`, stored in the binary as plain text (`npm run build -- --set-version X`).
declare const __OUTPOST_RELEASE__: string | undefined;

/** A version as releases name them: major.minor.patch and an optional pre-release (`0.2.0-rc.1`). */
export const SEMVER = /^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$/;

/** The text the build stamps into the bundle for `version`. */
export function releaseMarkerText(version: string): string {
  return `outpost-release;version=${version};`;
}

const MARKER = new RegExp(`outpost-release;version=(${SEMVER.source.slice(1, -1)});`);

/** The version stamped into a built binary, read from its bytes (it need not be runnable here). */
export function releaseMarker(binary: Uint8Array): string | undefined {
  // The bundle is stored as text inside the executable: search the bytes, then read the few after each hit.
  const bytes = Buffer.from(binary.buffer, binary.byteOffset, binary.byteLength);
  for (let at = bytes.indexOf("outpost-release;"); at >= 0; at = bytes.indexOf("outpost-release;", at + 1)) {
    const found = MARKER.exec(bytes.toString("latin1", at, at + 100));
    if (found?.index === 0) return found[1];
  }
  return undefined;
}

/**
 * The revision of root's update units and rollback script this release carries (src/service/unit.ts),
 * stamped into the bundle as this literal text so that root can read it from a release it is asked to
 * install: a release below the root boundary (revision 2) would bring back an installer that trusts the agent,
 * and is never installed (docs/ota.md, "The root boundary").
 */
export const UNITS_MARKER = "outpost-units;revision=2;";
export const UNITS_REVISION = Number(/revision=(\d+);/.exec(UNITS_MARKER)?.[1]);
/** The lowest revision root installs. */
export const ROOT_BOUNDARY_REVISION = 2;
/** Finds the units marker in a binary's text (searched in chunks by the installer). */
export const UNITS_MARKER_PATTERN = /outpost-units;revision=(\d+);/;

export const VERSION: string =
  typeof __OUTPOST_RELEASE__ === "string" ? (MARKER.exec(__OUTPOST_RELEASE__)?.[1] ?? pkg.version) : pkg.version;
export const COMMIT: string = typeof __OUTPOST_COMMIT__ === "string" ? __OUTPOST_COMMIT__ : "dev";

/** `outpost <semver> (<git commit>) node <vX.Y.Z> linux-<arch>`, the contract of `--version`. */
export function versionLine(): string {
  return `outpost ${VERSION} (${COMMIT}) node ${process.version} ${process.platform}-${process.arch}`;
}

/** A release's directory under /opt/outpost/releases: `<version>-<first 12 hex of its sha256>`. */
export function releaseName(version: string, sha256: string): string {
  return `${version}-${sha256.slice(0, 12)}`;
}

/** The version in a release name (`<version>-<sha12>`, see releaseName); undefined for any other name. */
export function releaseVersion(name: string): string | undefined {
  return /^([0-9A-Za-z.+-]+)-[0-9a-f]{12}$/.exec(name)?.[1];
}
