import pkg from "../package.json" with { type: "json" };

// Replaced by the build (esbuild `define`); a run from source says "dev".
declare const __OUTPOST_COMMIT__: string | undefined;

export const VERSION: string = pkg.version;
export const COMMIT: string = typeof __OUTPOST_COMMIT__ === "string" ? __OUTPOST_COMMIT__ : "dev";

/** `outpost <semver> (<git commit>) node <vX.Y.Z> linux-<arch>`, the contract of `--version`. */
export function versionLine(): string {
  return `outpost ${VERSION} (${COMMIT}) node ${process.version} ${process.platform}-${process.arch}`;
}
