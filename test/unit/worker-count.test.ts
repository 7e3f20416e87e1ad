// Issue 27, item 2: the default number of task workers follows memory as well as cores.
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { defaultWorkers, memoryLimit } from "../../src/tasks/worker-count.ts";
import { tempDir } from "../helpers/temp.ts";

const MiB = 1024 * 1024;

describe("the default number of task workers", () => {
  it("a 4-core board under MemoryMax=384M gets 2; with memory to spare, one per core but one", () => {
    const unit = { bytes: 384 * MiB, from: "the cgroup's memory.max" };
    assert.deepEqual(defaultWorkers({ cores: 4, limit: unit }).workers, 2);
    assert.match(defaultWorkers({ cores: 4, limit: unit }).why, /^2 by memory: 384 MiB \(the cgroup's memory.max\)/);
    assert.equal(defaultWorkers({ cores: 4, limit: { bytes: 24 * 1024 * MiB, from: "x" } }).workers, 3);
    assert.match(defaultWorkers({ cores: 4, limit: { bytes: 24 * 1024 * MiB, from: "x" } }).why, /by cores/);
    // Never none, however little memory or however few cores.
    assert.equal(defaultWorkers({ cores: 1, limit: { bytes: 64 * MiB, from: "x" } }).workers, 1);
    assert.equal(defaultWorkers({ cores: 8, limit: { bytes: 200 * MiB, from: "x" } }).workers, 1);
    // A Pi Zero 2 W (4 cores, 512 MiB, no limit): 3/4 of it.
    assert.equal(
      defaultWorkers({ cores: 4, limit: memoryLimit({ procRoot: "/nonexistent", total: 512 * MiB }) }).workers,
      2,
    );
  });

  it("reads the limit from the agent's cgroup (v2), and the machine's memory where there is none", () => {
    const root = tempDir("outpost-cgroup-");
    mkdirSync(join(root, "proc", "self"), { recursive: true });
    mkdirSync(join(root, "cg", "system.slice", "outpost.service"), { recursive: true });
    writeFileSync(join(root, "proc", "self", "cgroup"), "0::/system.slice/outpost.service\n");
    const max = join(root, "cg", "system.slice", "outpost.service", "memory.max");
    const at = { procRoot: join(root, "proc"), cgroupRoot: join(root, "cg"), total: 4096 * MiB };
    writeFileSync(max, `${384 * MiB}\n`);
    assert.deepEqual(memoryLimit(at), { bytes: 384 * MiB, from: "the cgroup's memory.max" });
    // A slice's limit above the unit's counts too: the smallest wins.
    writeFileSync(join(root, "cg", "system.slice", "memory.max"), `${256 * MiB}\n`);
    assert.deepEqual(memoryLimit(at), { bytes: 256 * MiB, from: "the cgroup's memory.max" });
    writeFileSync(join(root, "cg", "system.slice", "memory.max"), "max\n");
    writeFileSync(max, "max\n");
    assert.deepEqual(memoryLimit(at), { bytes: 3072 * MiB, from: "3/4 of the machine's memory" });
  });
});
