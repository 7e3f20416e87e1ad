// The suite leaves nothing in the temporary directory (issue 22): what it finds there at the end that was not
// there at the start, named like a test's directory (`outpost-*`), fails the run and is listed.
import { readdirSync } from "node:fs";
import { tmpdir } from "node:os";

const ours = () => new Set(readdirSync(tmpdir()).filter((n) => n.startsWith("outpost-")));
let before = new Set<string>();

export function globalSetup(): void {
  before = ours();
}

export function globalTeardown(): void {
  const left = [...ours()].filter((n) => !before.has(n)).sort();
  if (left.length === 0) return;
  process.stderr.write(`\nthe tests left ${left.length} directories in ${tmpdir()}:\n  ${left.join("\n  ")}\n`);
  process.exitCode = 1;
}
