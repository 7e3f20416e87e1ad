// npm run bench -- --only delta: what a device downloads for an update (issue 13, item 2), for an app-only
// change (an earlier commit's build), a runtime change (the same commit on another Node) and a first install.
// Builds in throwaway clones of this checkout: about a minute each.
import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { constants, zstdCompressSync } from "node:zlib";
import { chunk, plan } from "../src/ota/chunks.ts";
import { ROOT } from "../test/helpers/agent-process.ts";
import type { BenchRow } from "./bench-board.ts";

/** The other runtime for the runtime-change case, and its npm integrity (pinned like targets/). */
export const OTHER_NODE = {
  version: "24.20.0",
  integrity: "sha512-tkBwUleGts0UUnK+6HKJkEsOMFb9bkG/YvXw8/alFTaDSUbneVeAFVqu6ELHXuyvVYP4vo1hNAAEfN9zl0Cm3g==",
};

const MiB = 1024 * 1024;
const zstd = (b: Uint8Array) => zstdCompressSync(b, { params: { [constants.ZSTD_c_compressionLevel]: 19 } }).length;

/** Builds `rev` for linux-x64 in a clone (node_modules and caches copied), optionally on another Node. */
export function buildAt(rev: string, node?: typeof OTHER_NODE): Buffer {
  const dir = mkdtempSync(join(tmpdir(), "outpost-delta-"));
  try {
    const checkout = join(dir, "outpost");
    execFileSync("git", ["clone", "--quiet", "--no-hardlinks", ROOT, checkout]);
    execFileSync("git", ["checkout", "--quiet", rev], { cwd: checkout });
    cpSync(join(ROOT, "node_modules"), join(checkout, "node_modules"), { recursive: true, verbatimSymlinks: true });
    cpSync(join(ROOT, ".cache", "assets"), join(checkout, ".cache", "assets"), { recursive: true });
    if (node) {
      const file = join(checkout, "targets", "linux-x64.json");
      const target = JSON.parse(readFileSync(file, "utf8")) as { node: Record<string, string>; pkgTarget: string };
      target.node.version = node.version;
      target.node.integrity = node.integrity;
      target.pkgTarget = `node${node.version}-linux-x64`;
      writeFileSync(file, JSON.stringify(target, null, 2));
    } else {
      cpSync(join(ROOT, ".cache", "runtime"), join(checkout, ".cache", "runtime"), { recursive: true });
    }
    execFileSync(process.execPath, [join(checkout, "build", "build.ts"), "--target", "linux-x64"], {
      cwd: checkout,
      stdio: ["ignore", "ignore", "inherit"],
    });
    return readFileSync(join(checkout, "dist", "outpost-linux-x64"));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** What updating `from` to `to` fetches: the chunks it lacks, raw and as zstd-19 would carry them. */
function delta(from: Buffer | undefined, to: Buffer) {
  const wanted = chunk(to);
  const p = plan(wanted, from ? chunk(from) : []);
  const compressed = p.fetch.reduce((n, c) => n + zstd(to.subarray(c.offset, c.offset + c.size)), 0);
  return { raw: p.fetchBytes, compressed, chunks: p.fetch.length, of: wanted.length };
}

export async function deltaRows(rows: BenchRow[], o: { appFrom: string }): Promise<void> {
  const head = execFileSync("git", ["rev-parse", "--short=12", "HEAD"], { cwd: ROOT, encoding: "utf8" }).trim();
  const current = buildAt("HEAD");
  const whole = zstd(current);
  const cases: [string, Buffer | undefined, string][] = [
    [`app-only change (${o.appFrom} -> ${head})`, buildAt(o.appFrom), "an earlier commit's build, same runtime"],
    [`runtime change (Node ${OTHER_NODE.version} -> 24.21.0, ${head})`, buildAt("HEAD", OTHER_NODE), "same code"],
    ["first install", undefined, "nothing to reuse"],
  ];
  for (const [name, from, note] of cases) {
    const d = delta(from, current);
    rows.push({
      metric: `update download, ${name}`,
      outpost: d.compressed / MiB,
      bare: whole / MiB,
      unit: "MiB",
      note: `${note}; ${d.chunks} of ${d.of} chunks, ${(d.raw / MiB).toFixed(2)} MiB raw; bare = the whole binary, zstd -19`,
    });
  }
}
