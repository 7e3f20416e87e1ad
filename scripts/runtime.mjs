// Fetches the pinned official Node runtime for a target from the npm registry, checks it against the
// sha512 pinned in targets/, and caches it under .cache/runtime. Plain JavaScript on purpose: it must run
// on whatever Node the machine has (20 here) to bootstrap the pinned one.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");

export function loadTarget(name) {
  return JSON.parse(readFileSync(join(root, "targets", `${name}.json`), "utf8"));
}

export function hostTargetName() {
  const arch = process.arch === "arm64" ? "arm64" : "x64";
  return `linux-${arch}`;
}

/** Returns the directory holding bin/node for the target, downloading and verifying it if needed. */
export function ensureRuntime(targetName) {
  const target = loadTarget(targetName);
  const { package: pkg, version, integrity } = target.node;
  const dir = join(root, ".cache", "runtime", `${pkg}-${version}`);
  const stamp = join(dir, ".verified");
  if (existsSync(stamp) && readFileSync(stamp, "utf8") === integrity) return dir;

  const work = join(root, ".cache", "runtime", `.tmp-${process.pid}`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  process.stderr.write(`outpost: fetching ${pkg}@${version} from the npm registry\n`);
  // `npm pack` and not `npm install`: the package's os/cpu fields refuse an install on the other arch.
  execFileSync("npm", ["pack", `${pkg}@${version}`, "--pack-destination", work, "--silent"], {
    stdio: ["ignore", "ignore", "inherit"],
  });
  const tgz = join(work, `${pkg}-${version}.tgz`);
  const [algo, expected] = integrity.split("-", 2);
  const actual = createHash(algo).update(readFileSync(tgz)).digest("base64");
  if (actual !== expected) {
    rmSync(work, { recursive: true, force: true });
    throw new Error(`${pkg}@${version}: ${algo} mismatch (pinned ${expected}, got ${actual})`);
  }
  execFileSync("tar", ["-xzf", tgz, "-C", work, "package/bin/node", "package/LICENSE"]);
  rmSync(dir, { recursive: true, force: true });
  renameSync(join(work, "package"), dir);
  rmSync(work, { recursive: true, force: true });
  writeFileSync(stamp, integrity);
  return dir;
}

export function hostNode() {
  return join(ensureRuntime(hostTargetName()), "bin", "node");
}
