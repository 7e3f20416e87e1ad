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
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { parseArgs } from "node:util";
import { brotliCompressSync, constants as zlibConstants, zstdCompressSync } from "node:zlib";
import * as esbuild from "esbuild";
// @ts-expect-error plain JavaScript helper shared with the bootstrap scripts
import { ensureRuntime, loadTarget, root } from "../scripts/runtime.mjs";
import { releaseMarkerText, SEMVER } from "../src/version.ts";
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
    // Another version than package.json's, stamped into the binary (release candidates, update tests).
    "set-version": { type: "string" },
    out: { type: "string" },
    // Node/V8 flags baked into the binary (the SEA's execArgv), space-separated; for measuring other choices.
    "exec-argv": { type: "string" },
  },
});
const targets = (values.target ?? TARGETS) as string[];
const dist = values.out ?? join(root as string, "dist");
const strip = values["no-strip"] !== true;
const version =
  values["set-version"] ??
  (JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { version: string }).version;
if (!SEMVER.test(version)) throw new Error(`--set-version: not a semver: ${version}`);
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

/**
 * MQTT.js loads every transport at the first connect: WebSockets (ws) and SOCKS proxies (socks, ip-address,
 * smart-buffer) among them, about 300 KiB of code compiled and kept. Outpost takes only mqtt:// and mqtts://
 * URLs (the config schema and ctl refuse others), so both are left out of the bundle; a stub says so if it is
 * ever reached.
 */
const mqttTransports: esbuild.Plugin = {
  name: "mqtt-transports",
  setup(b) {
    b.onResolve({ filter: /^\.\/(ws|socks)$/ }, (args) =>
      /mqtt[\\/]build[\\/]lib[\\/]connect$/.test(args.resolveDir)
        ? { path: args.path.slice(2), namespace: "outpost-stub" }
        : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: "outpost-stub" }, (args) => {
      const refuse = `() => { throw new Error("MQTT over ${args.path} is not built into outpost: use mqtt:// or mqtts://"); }`;
      const contents =
        args.path === "ws"
          ? `exports.streamBuilder = ${refuse}; exports.browserStreamBuilder = ${refuse};`
          : `module.exports = ${refuse};`;
      return { contents, loader: "js" };
    });
  },
};

/**
 * MQTT.js and mqtt-packet call `debug(...)` many times for every packet. Disabled, each call still builds its
 * rest-parameter array and arguments: about 30 KiB of garbage per command round trip, which with the kept 1 MiB
 * semi-space means a scavenge every few commands. The bundle takes a `debug` that does nothing (DEBUG=mqttjs*
 * works from a checkout, not in the binary).
 */
const quietDebug: esbuild.Plugin = {
  name: "quiet-debug",
  setup(b) {
    b.onResolve({ filter: /^debug$/ }, () => ({ path: "debug", namespace: "outpost-debug" }));
    b.onLoad({ filter: /.*/, namespace: "outpost-debug" }, () => ({
      contents: [
        "function noop() {}",
        "function createDebug() {",
        "  const d = function () {};",
        "  d.enabled = false; d.namespace = ''; d.log = noop; d.destroy = noop; d.extend = createDebug;",
        "  return d;",
        "}",
        "createDebug.enable = noop; createDebug.disable = () => ''; createDebug.enabled = () => false;",
        "createDebug.coerce = (v) => v; createDebug.formatters = {}; createDebug.default = createDebug;",
        "module.exports = createDebug;",
      ].join("\n"),
      loader: "js",
    }));
  },
};

/**
 * The bundle's copy of onnxruntime-node takes its native binding from the global the task worker sets after
 * `process.dlopen` of the extracted file (src/tasks/worker.ts): inside the binary there is no file to require.
 */
const ortBinding: esbuild.Plugin = {
  name: "ort-binding",
  setup(b) {
    b.onLoad({ filter: /onnxruntime-node[\\/]dist[\\/]binding\.js$/ }, (args) => {
      const source = readFileSync(args.path, "utf8");
      const call =
        /require\(`\.\.\/bin\/napi-v6\/\$\{process\.platform\}\/\$\{process\.arch\}\/onnxruntime_binding\.node`\)/;
      if (!call.test(source)) throw new Error(`${args.path}: the binding's require changed; update build/build.ts`);
      return { contents: source.replace(call, "globalThis.__outpostOrtBinding"), loader: "js" };
    });
  },
};

async function bundle(
  entry: string,
  outfile: string,
  define: Record<string, string>,
  plugins: esbuild.Plugin[] = [],
): Promise<void> {
  const result = await esbuild.build({
    absWorkingDir: root,
    entryPoints: [entry],
    outfile,
    bundle: true,
    platform: "node",
    format: "cjs",
    target: "node24",
    minifySyntax: true,
    // V8 keeps a script's source in the heap for as long as the script lives. Whitespace and comments out, the
    // bundle is 2.2 MB instead of 3.0, and pure ASCII: one non-ASCII character left in a comment (a dash in a
    // dependency's doc comment was enough) makes V8 store the whole source two bytes a character, 6.1 MB. The
    // names stay (no minifyIdentifiers), so stack traces and profiles still name functions.
    minifyWhitespace: true,
    legalComments: "none",
    logLevel: "warning",
    // Used only from a checkout (src/tasks/runtime.ts), where the worker is started from its file.
    define: { "import.meta.dirname": '""', ...define },
    plugins,
    metafile: true,
  });
  const text = readFileSync(outfile, "utf8");
  if (text.includes(root as string)) throw new Error(`bundle leaks the checkout path ${root}`);
  // One character past ASCII and V8 holds the whole source two bytes a character (see minifyWhitespace).
  const wide = /[\u0080-\uffff]/.exec(text);
  if (wide) throw new Error(`bundle ${outfile} is not ASCII at ${wide.index}: V8 would keep it at twice the size`);
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

/**
 * onnxruntime-node's two linux files for the target's arch, concatenated and zstd-compressed (level 19: 46 MiB
 * become 13 on x64), with a manifest the agent extracts them by (src/tasks/runtime.ts). Compressing takes about
 * 40 s, so the result is kept in `.cache/assets`, named by the input's sha256 (zstd is deterministic).
 */
function nativeAssets(stage: string, target: Target): Record<string, string> {
  const dir = join(root, "node_modules", "onnxruntime-node", "bin", "napi-v6", "linux", target.arch);
  const names = ["onnxruntime_binding.node", "libonnxruntime.so.1"];
  const files = names.map((name) => {
    const bytes = readFileSync(join(dir, name));
    return { name, bytes, size: bytes.length, sha256: createHash("sha256").update(bytes).digest("hex") };
  });
  const raw = Buffer.concat(files.map((f) => f.bytes));
  const whole = createHash("sha256").update(raw).digest("hex");
  const cache = join(root, ".cache", "assets");
  const packed = join(cache, `${whole}.zst19`);
  if (!existsSync(packed)) {
    mkdirSync(cache, { recursive: true });
    const level = { [zlibConstants.ZSTD_c_compressionLevel]: 19 };
    writeFileSync(`${packed}.tmp`, zstdCompressSync(raw, { params: level }));
    renameSync(`${packed}.tmp`, packed);
  }
  const manifest = join(stage, `ort-native-${target.arch}.json`);
  writeFileSync(
    manifest,
    JSON.stringify({
      sha256: whole,
      files: files.map(({ name, size, sha256 }) => ({ name, size, sha256 })),
      binding: "onnxruntime_binding.node",
    }),
  );
  return { "ort-native.zst": packed, "ort-native.json": manifest };
}

/**
 * onnxruntime-web's SIMD WebAssembly (14 MiB), brotli 11 (2.2 MiB; zstd 19 gives 2.4): the fallback runtime,
 * the same for every arch. About 40 s to compress, so cached like the native runtime.
 */
function wasmAsset(): Record<string, string> {
  const raw = readFileSync(join(root, "node_modules", "onnxruntime-web", "dist", "ort-wasm-simd-threaded.wasm"));
  const cache = join(root, ".cache", "assets");
  const packed = join(cache, `${createHash("sha256").update(raw).digest("hex")}.br11`);
  if (!existsSync(packed)) {
    mkdirSync(cache, { recursive: true });
    const params = {
      [zlibConstants.BROTLI_PARAM_QUALITY]: 11,
      [zlibConstants.BROTLI_PARAM_LGWIN]: 24,
      [zlibConstants.BROTLI_PARAM_SIZE_HINT]: raw.length,
    };
    writeFileSync(`${packed}.tmp`, brotliCompressSync(raw, { params }));
    renameSync(`${packed}.tmp`, packed);
  }
  return { "ort-wasm.br": packed };
}

/** The demo's model and sample images (`outpost demo` runs them), under `demo/`. */
function demoAssets(): Record<string, string> {
  const demo = join(root, "src", "tasks", "demo");
  const assets: Record<string, string> = { "demo/parts.onnx": join(demo, "parts.onnx") };
  for (const f of readdirSync(join(demo, "samples")).sort()) assets[`demo/samples/${f}`] = join(demo, "samples", f);
  return assets;
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
  await bundle(
    "src/main.ts",
    entry,
    {
      __OUTPOST_COMMIT__: JSON.stringify(git(["rev-parse", "--short=12", "HEAD"])),
      // Readable from the file without running it (src/version.ts, releaseMarker): the release host cannot run
      // an arm64 binary.
      __OUTPOST_RELEASE__: JSON.stringify(releaseMarkerText(version)),
      __OUTPOST_SD_NOTIFY__: JSON.stringify(native),
    },
    [mqttTransports, quietDebug],
  );
  // The task worker is its own bundle, started from source (a worker cannot start from a file in the binary).
  const worker = join(stage, "task-worker.js");
  await bundle("src/tasks/worker.ts", worker, {}, [ortBinding]);

  // A private HOME for pkg: its cache lives under the project, not in the user's home.
  const home = join(root, ".cache", "pkg-home");
  rmSync(join(home, ".pkg-cache"), { recursive: true, force: true });
  const all = [...new Set([...targets, "linux-x64"])].map((name) => loadTarget(name) as Target);
  // The SEA blob is generated by a host-runnable node of the same version, so x64 is always primed.
  for (const target of all) primePkgCache(home, target);

  mkdirSync(dist, { recursive: true });
  const sums: string[] = [];
  for (const name of targets) {
    const target = loadTarget(name) as Target;
    // Per target: the assets differ by arch (the native inference runtime).
    const seaConfig = join(stage, `sea-config-${name}.json`);
    const assets = { ...nativeAssets(stage, target), ...wasmAsset(), ...demoAssets(), "task-worker.js": worker };
    writeFileSync(seaConfig, JSON.stringify({ execArgv, execArgvExtension: "none", assets }));
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
