// npm run build: one esbuild CommonJS bundle, then @yao-pkg/pkg --sea per target, into dist/.
// Offline apart from the npm registry: the Node runtimes come from targets/ (npm packages, pinned sha512)
// and are laid into pkg's download cache so that pkg never reaches for nodejs.org.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { parseArgs } from "node:util";
import * as esbuild from "esbuild";
// @ts-expect-error plain JavaScript helper shared with the bootstrap scripts
import { ensureRuntime, loadTarget, root } from "../scripts/runtime.mjs";
import { compileSdNotify } from "./native.ts";

interface Target {
  name: string;
  arch: string;
  cc: string;
  node: { version: string };
  pkgTarget: string;
  strip: string;
}

const TARGETS = ["linux-x64", "linux-arm64"];

const { values } = parseArgs({
  options: {
    target: { type: "string", multiple: true },
    "no-strip": { type: "boolean" },
    out: { type: "string" },
    // Node/V8 flags baked into the binary (the SEA's execArgv), space-separated; for measuring other choices.
    "exec-argv": { type: "string" },
  },
});
const targets = (values.target ?? TARGETS) as string[];
const dist = values.out ?? join(root as string, "dist");
const strip = values["no-strip"] !== true;
/**
 * Flags every start of the binary runs with (docs/benchmarks.md#footprint has the measurements behind them).
 * execArgvExtension "none": NODE_OPTIONS in the environment cannot change them.
 */
const EXEC_ARGV = ["--max-semi-space-size=1"];
const execArgv = values["exec-argv"] === undefined ? EXEC_ARGV : values["exec-argv"].split(" ").filter(Boolean);

function git(args: string[]): string {
  try {
    return execFileSync("git", args, { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  } catch {
    return "unknown";
  }
}

async function bundle(outfile: string, sdNotify: Record<string, string>): Promise<void> {
  const result = await esbuild.build({
    absWorkingDir: root,
    entryPoints: ["src/main.ts"],
    outfile,
    bundle: true,
    platform: "node",
    format: "cjs",
    target: "node24",
    minifySyntax: true,
    legalComments: "none",
    logLevel: "warning",
    define: {
      __OUTPOST_COMMIT__: JSON.stringify(git(["rev-parse", "--short=12", "HEAD"])),
      __OUTPOST_SD_NOTIFY__: JSON.stringify(sdNotify),
    },
    metafile: true,
  });
  const text = readFileSync(outfile, "utf8");
  if (text.includes(root as string)) throw new Error(`bundle leaks the checkout path ${root}`);
  const inputs = Object.keys(result.metafile.inputs).length;
  process.stdout.write(
    `bundle: ${relative(root, outfile)} ${(text.length / 1024).toFixed(0)} KiB from ${inputs} files\n`,
  );
}

/** Lays the verified runtime out the way pkg's SEA downloader leaves it, so pkg finds it "already downloaded". */
function primePkgCache(home: string, target: Target): void {
  const nodeDir = `node-v${target.node.version}-linux-${target.arch}`;
  const sea = join(home, ".pkg-cache", "sea");
  const bin = join(sea, nodeDir, "bin");
  mkdirSync(bin, { recursive: true });
  writeFileSync(join(sea, `${nodeDir}.tar.gz`), "");
  writeFileSync(join(sea, `${nodeDir}.tar.gz.ok`), "");
  const node = join(bin, "node");
  copyFileSync(join(ensureRuntime(target.name), "bin", "node"), node);
  chmodSync(node, 0o755);
  // Stripping the base binary saves about 20 MiB; it has to happen before the blob is injected.
  if (strip) execFileSync(target.strip, ["--strip-all", node]);
  writeFileSync(`${node}.ok`, "");
}

function sha256(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

async function main(): Promise<void> {
  const started = performance.now();
  // A private staging directory per build: two builds on one host never collide. The path stays out of the
  // binaries (build/patches: pkg names the entry by its base name), so builds are byte-identical all the same.
  const stage = mkdtempSync(join(tmpdir(), "outpost-build-"));
  try {
    await build(stage, started);
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}

async function build(stage: string, started: number): Promise<void> {
  const entry = join(stage, "outpost.cjs");
  // One bundle for every target, so it carries the addon of every arch (about 80 KiB): a binary is the same
  // whichever targets a build was asked for.
  const native = compileSdNotify(
    root,
    stage,
    TARGETS.map((name) => loadTarget(name) as Target),
  );
  await bundle(entry, native);

  // A private HOME for pkg: its cache lives under the project, not in the user's home.
  const home = join(root, ".cache", "pkg-home");
  rmSync(join(home, ".pkg-cache"), { recursive: true, force: true });
  const all = [...new Set([...targets, "linux-x64"])].map((name) => loadTarget(name) as Target);
  // The SEA blob is generated by a host-runnable node of the same version, so x64 is always primed.
  for (const target of all) primePkgCache(home, target);

  mkdirSync(dist, { recursive: true });
  const seaConfig = join(stage, "sea-config.json");
  writeFileSync(seaConfig, JSON.stringify({ execArgv, execArgvExtension: "none" }));
  const sums: string[] = [];
  for (const name of targets) {
    const target = loadTarget(name) as Target;
    const output = join(dist, `outpost-${name}`);
    rmSync(output, { force: true });
    execFileSync(
      process.execPath,
      [
        join(root, "node_modules", "@yao-pkg", "pkg", "lib-es5", "bin.js"),
        entry,
        "--sea",
        "--targets",
        target.pkgTarget,
        "--output",
        output,
      ],
      {
        cwd: stage,
        stdio: ["ignore", "ignore", "inherit"],
        // PKG_SEA_RELATIVE_MAIN and PKG_SEA_CONFIG: our patch to pkg (build/patches), which keeps the staging path
        // out of the blob and passes sea-config fields (execArgv) that simple SEA mode would drop.
        env: {
          ...process.env,
          HOME: home,
          PKG_CACHE_PATH: join(home, ".pkg-cache"),
          PKG_SEA_RELATIVE_MAIN: "1",
          PKG_SEA_CONFIG: seaConfig,
        },
      },
    );
    if (!existsSync(output)) throw new Error(`pkg produced no ${output}`);
    chmodSync(output, 0o755);
    const hash = sha256(output);
    sums.push(`${hash}  outpost-${name}`);
    const mib = (readFileSync(output).length / 1024 / 1024).toFixed(1);
    process.stdout.write(`built: ${relative(root, output)} ${mib} MiB sha256 ${hash}\n`);
  }
  writeFileSync(join(dist, "SHA256SUMS"), `${sums.join("\n")}\n`);
  process.stdout.write(`build: done in ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
}

await main();
