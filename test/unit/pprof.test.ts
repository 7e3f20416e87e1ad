// Issue 28: ctl's own conversions and archive: V8's profiles as pprof, and the bundle's tar.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { gunzipSync } from "node:zlib";
import { Profile } from "pprof-format";
import { cpuToPprof, heapToPprof } from "../../src/cli/pprof.ts";
import { tarGz } from "../../src/cli/tar.ts";

const frame = (functionName: string, lineNumber = 0, columnNumber = 0) => ({
  functionName,
  url: "file:///agent.js",
  lineNumber,
  columnNumber,
});

describe("pprof from V8", () => {
  it("a CPU profile: leaf-first stacks, lines from 1, idle is not CPU, two functions on one line stay two", () => {
    const p = cpuToPprof({
      nodes: [
        { id: 1, callFrame: frame("(root)"), hitCount: 0, children: [2, 3, 5] },
        { id: 2, callFrame: frame("decode", 9, 4), hitCount: 3, children: [4] },
        { id: 4, callFrame: frame("", 20, 1), hitCount: 2 },
        { id: 5, callFrame: frame("", 20, 30), hitCount: 1 },
        { id: 3, callFrame: frame("(idle)"), hitCount: 94 },
      ],
      startTime: 0,
      endTime: 100_000,
      samples: Array(100).fill(1),
    });
    const d = Profile.decode(gunzipSync(p));
    const str = (i: number | bigint) => d.stringTable.strings[Number(i)];
    const fn = new Map(d.function.map((f) => [Number(f.id), f]));
    const loc = new Map(d.location.map((l) => [Number(l.id), l]));
    const stacks = d.sample.map((s) => ({
      names: s.locationId.map((id) => str(fn.get(Number(loc.get(Number(id))?.line[0]?.functionId))?.name ?? 0)),
      hits: Number(s.value[0]),
    }));
    assert.deepEqual(stacks.map((s) => s.hits).sort(), [1, 2, 3]);
    assert.ok(stacks.every((s) => !s.names.includes("(idle)")));
    assert.deepEqual(stacks.find((s) => s.hits === 2)?.names, ["(anonymous)", "decode", "(root)"]);
    assert.equal(Number(loc.get(2)?.line[0]?.line), 10);
    // The two anonymous functions on line 20 are two functions.
    assert.equal(d.function.filter((f) => str(f.name) === "(anonymous)").length, 2);
    assert.equal(Number(d.period), 1_000_000);
  });

  it("a heap profile: bytes per stack; a tree deeper than V8 makes is cut, not followed", () => {
    type N = { callFrame: ReturnType<typeof frame>; selfSize: number; id: number; children: N[] };
    let deep: N = { callFrame: frame("leaf"), selfSize: 64, id: 0, children: [] };
    for (let i = 1; i < 5000; i++) deep = { callFrame: frame(`f${i}`), selfSize: 8, id: i, children: [deep] };
    const d = Profile.decode(gunzipSync(heapToPprof({ head: deep })));
    assert.equal(d.sample.length, 1024);
    assert.ok(d.sample.every((s) => s.locationId.length <= 1024));
  });
});

describe("the bundle's tar", () => {
  it("takes plain relative names only", () => {
    for (const bad of ["../x", "/etc/passwd", "a/../b", "x".repeat(100), "a\nb", ""]) {
      assert.throws(() => tarGz([{ name: bad, data: "" }]), /not a plain relative name/, JSON.stringify(bad));
    }
    assert.ok(tarGz([{ name: "files/update/journal.json", data: "{}" }], -5).length > 0);
  });
});
