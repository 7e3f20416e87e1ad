import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { it } from "node:test";
import { ROOT } from "../helpers/agent-process.ts";

it("a clean build from another checkout path gives byte-identical binaries", (t) => {
  // The other checkout is a clone of HEAD; uncommitted edits in this tree would differ for a good reason.
  const dirty = execFileSync("git", ["status", "--porcelain", "--untracked-files=no"], { cwd: ROOT, encoding: "utf8" });
  if (dirty.trim() !== "") {
    t.skip("tracked files have uncommitted changes; commit to compare");
    return;
  }
  const other = mkdtempSync(join(tmpdir(), "outpost-repro-"));
  try {
    const checkout = join(other, "elsewhere", "outpost");
    execFileSync("git", ["clone", "--quiet", "--no-hardlinks", ROOT, checkout]);
    // Same commit as this tree, so that the embedded commit matches: the build must not depend on the path.
    const head = execFileSync("git", ["rev-parse", "HEAD"], { cwd: ROOT, encoding: "utf8" }).trim();
    execFileSync("git", ["checkout", "--quiet", head], { cwd: checkout });
    cpSync(join(ROOT, "node_modules"), join(checkout, "node_modules"), { recursive: true, verbatimSymlinks: true });
    cpSync(join(ROOT, ".cache", "runtime"), join(checkout, ".cache", "runtime"), { recursive: true });
    execFileSync(process.execPath, [join(checkout, "build", "build.ts")], { cwd: checkout, stdio: "ignore" });
    const mine = readFileSync(join(ROOT, "dist", "SHA256SUMS"), "utf8");
    const theirs = readFileSync(join(checkout, "dist", "SHA256SUMS"), "utf8");
    assert.equal(theirs, mine);
  } finally {
    rmSync(other, { recursive: true, force: true });
  }
});
