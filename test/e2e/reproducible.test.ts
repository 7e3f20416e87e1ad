import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { it } from "node:test";
import { promisify } from "node:util";
import { ROOT } from "../helpers/agent-process.ts";

const run = promisify(execFile);

// Issue 10 item 9: builds staged in a fixed /tmp/outpost-build (pkg stored the entry's absolute path in the
// blob), so two builds on one host collided. Now each build has its own staging directory, and pkg is patched
// (build/patches) to keep that path out of the binary: two builds at once, from two checkout paths, must still be
// byte-identical to this tree's.
it("two clean builds at once, from other checkout paths, give byte-identical binaries", async (t) => {
  // The other checkouts are clones of HEAD; uncommitted edits in this tree would differ for a good reason.
  const dirty = execFileSync("git", ["status", "--porcelain", "--untracked-files=no"], { cwd: ROOT, encoding: "utf8" });
  if (dirty.trim() !== "") {
    t.skip("tracked files have uncommitted changes; commit to compare");
    return;
  }
  const other = mkdtempSync(join(tmpdir(), "outpost-repro-"));
  const stages = () => readdirSync(tmpdir()).filter((f) => f.startsWith("outpost-build-")).length;
  const stagesBefore = stages();
  try {
    const head = execFileSync("git", ["rev-parse", "HEAD"], { cwd: ROOT, encoding: "utf8" }).trim();
    const checkouts = [join(other, "elsewhere", "outpost"), join(other, "a", "much", "deeper", "place", "outpost")];
    for (const checkout of checkouts) {
      execFileSync("git", ["clone", "--quiet", "--no-hardlinks", ROOT, checkout]);
      // Same commit as this tree, so that the embedded commit matches: the build must not depend on the path.
      execFileSync("git", ["checkout", "--quiet", head], { cwd: checkout });
      cpSync(join(ROOT, "node_modules"), join(checkout, "node_modules"), { recursive: true, verbatimSymlinks: true });
      cpSync(join(ROOT, ".cache", "runtime"), join(checkout, ".cache", "runtime"), { recursive: true });
      // The compressed inference runtime (about 40 s of zstd -19 per arch), named by its input's sha256.
      cpSync(join(ROOT, ".cache", "assets"), join(checkout, ".cache", "assets"), { recursive: true });
    }
    await Promise.all(
      checkouts.map((checkout) => run(process.execPath, [join(checkout, "build", "build.ts")], { cwd: checkout })),
    );
    const mine = readFileSync(join(ROOT, "dist", "SHA256SUMS"), "utf8");
    for (const checkout of checkouts) assert.equal(readFileSync(join(checkout, "dist", "SHA256SUMS"), "utf8"), mine);
    assert.equal(stages(), stagesBefore, "each build removes its staging directory");
  } finally {
    rmSync(other, { recursive: true, force: true });
  }
});
