// Issue 28, items 2 and 5: debug.logs against a fake context: the ring's lines filtered, sealed to the key the
// request names, in chunks whose sha256 the answer lists; one transfer at a time, rate-limited.
import assert from "node:assert/strict";
import { createHash, generateKeyPairSync } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { zstdDecompressSync } from "node:zlib";
import { allows } from "../../src/commands/rules.ts";
import { memoryRoom } from "../../src/core/cgroup-memory.ts";
import { isOutpostError } from "../../src/core/errors.ts";
import { LogRing } from "../../src/core/log-ring.ts";
import { diagnosticsModule, selectLines } from "../../src/diagnostics/module.ts";
import { open, rawPublicKey, seal } from "../../src/diagnostics/seal.ts";
import { fakeContext } from "../helpers/fake-context.ts";
import { tempDir } from "../helpers/temp.ts";

type Answer = {
  lines: number;
  first: number;
  last: number | null;
  upTo: number;
  dropped: number;
  missed: number;
  key: string;
  size: number;
  chunks: { size: number; sha256: string }[];
};

const operator = () => {
  const pair = generateKeyPairSync("x25519");
  return { privateKey: pair.privateKey, to: rawPublicKey(pair.publicKey) };
};

function ring(now: number): LogRing {
  const r = new LogRing(1024 * 1024);
  const at = (agoMs: number) => new Date(now - agoMs).toISOString();
  r.push(JSON.stringify({ level: "info", time: at(3_600_000), component: "mqtt", msg: "an hour ago" }));
  r.push(JSON.stringify({ level: "warn", time: at(120_000), component: "tasks", msg: "two minutes ago" }));
  r.push(JSON.stringify({ level: "debug", time: at(60_000), component: "mqtt", msg: "a minute ago" }));
  r.push(JSON.stringify({ level: "error", time: at(1000), component: "ota", msg: "just now" }));
  return r;
}

describe("debug.logs", () => {
  it("answers the lines asked for, sealed to the request's key, in chunks the answer names", async () => {
    const now = 1_700_000_000_000;
    const fake = fakeContext(diagnosticsModule, { logs: ring(now) });
    try {
      const me = operator();
      const read = async (params: Record<string, unknown>, id: string) => {
        // Past the rate limit's refill: this test reads more than a burst.
        fake.clock.advance(12_000);
        const before = fake.direct.length;
        const answer = (await fake.command("debug.logs", { to: me.to, ...params }, { id })) as Answer;
        const published = fake.direct.slice(before);
        assert.equal(published.length, answer.chunks.length);
        const bodies = published.map(({ topic, payload }, index) => {
          assert.equal(topic, "outpost/dev-fake/diag");
          const end = payload.indexOf(0x0a);
          assert.deepEqual(JSON.parse(payload.subarray(0, end).toString()), { id, index, count: published.length });
          const body = payload.subarray(end + 1);
          assert.equal(createHash("sha256").update(body).digest("hex"), answer.chunks[index]?.sha256);
          return body;
        });
        const plain = zstdDecompressSync(open(bodies, me, answer.key, { device: "dev-fake", request: id }));
        assert.equal(plain.length, answer.size);
        const lines = plain.toString().split("\n").filter(Boolean);
        assert.equal(lines.length, answer.lines);
        return { answer, msgs: lines.map((l) => (JSON.parse(l) as { msg: string; seq: number }).msg) };
      };
      const all = await read({}, "r1");
      assert.deepEqual(all.msgs, ["an hour ago", "two minutes ago", "a minute ago", "just now"]);
      assert.deepEqual([all.answer.first, all.answer.last, all.answer.dropped], [1, 4, 0]);
      assert.deepEqual((await read({ sinceMs: 300_000 }, "r2")).msgs, ["two minutes ago", "a minute ago", "just now"]);
      assert.deepEqual((await read({ level: "warn" }, "r3")).msgs, ["two minutes ago", "just now"]);
      assert.deepEqual((await read({ component: "mqtt" }, "r4")).msgs, ["an hour ago", "a minute ago"]);
      assert.deepEqual((await read({ limit: 1 }, "r5")).msgs, ["just now"]);
      const none = await read({ after: 4 }, "r6");
      assert.deepEqual([none.msgs, none.answer.lines, none.answer.last, none.answer.upTo], [[], 0, null, 4]);
      // A follow with a filter goes on from the last line looked at, not the last that matched.
      const warn = await read({ after: 1, level: "error" }, "r7");
      assert.deepEqual([warn.msgs, warn.answer.last, warn.answer.upTo, warn.answer.missed], [["just now"], 4, 4, 0]);
    } finally {
      fake.close();
    }
  });

  it("a follow whose last line the ring has let go is told how many it missed", () => {
    const logs = new LogRing(100);
    for (let i = 1; i <= 30; i++) logs.push(`{"msg":"line-${String(i).padStart(2, "0")}"}`);
    const clock = { now: () => 0, mono: () => 0 } as never;
    const got = selectLines({ logs, clock }, { to: "", after: 10 });
    // 19 characters a line: the ring holds the last 5 (26..30); 11..25 went before they were read.
    assert.deepEqual([got.first, got.missed, got.lines.length, got.upTo], [26, 15, 5, 30]);
    assert.equal(selectLines({ logs, clock }, { to: "", after: 27 }).missed, 0);
  });

  it("another key cannot open it; a chunk changed, moved or from another answer does not open", () => {
    const me = operator();
    const bind = { device: "d", request: "r" };
    const plain = Buffer.from("x".repeat(100_000));
    const sealed = seal(plain, me.to, bind, 32 * 1024);
    assert.equal(sealed.chunks.length, 4);
    assert.deepEqual(open(sealed.chunks, me, sealed.key, bind), plain);
    const fails = (chunks: Buffer[], who = me, b = bind) =>
      assert.throws(
        () => open(chunks, who, sealed.key, b),
        (err) => isOutpostError(err) && err.code === "DIAG_INVALID",
      );
    fails(sealed.chunks, operator());
    fails([sealed.chunks[1] as Buffer, sealed.chunks[0] as Buffer, ...sealed.chunks.slice(2)]);
    fails(sealed.chunks.slice(0, 3));
    fails(sealed.chunks, me, { device: "d", request: "other" });
    fails(sealed.chunks, me, { device: "e", request: "r" });
    const flipped = Buffer.from(sealed.chunks[2] as Buffer);
    flipped[10] = (flipped[10] ?? 0) ^ 1;
    fails([...sealed.chunks.slice(0, 2), flipped, sealed.chunks[3] as Buffer]);
  });

  it("one transfer at a time, ten in a burst then one a second; a bad key is BAD_PARAMS", async () => {
    const fake = fakeContext(diagnosticsModule, { logs: ring(Date.now()) });
    try {
      const me = operator();
      const codeOf = async (p: Promise<unknown>) => {
        try {
          await p;
          return "ok";
        } catch (err) {
          return isOutpostError(err) ? err.code : String(err);
        }
      };
      const [a, b] = await Promise.all([
        codeOf(fake.command("debug.logs", { to: me.to })),
        codeOf(fake.command("debug.logs", { to: me.to })),
      ]);
      assert.deepEqual([a, b], ["ok", "DIAG_BUSY"]);
      for (let i = 0; i < 9; i++) assert.equal(await codeOf(fake.command("debug.logs", { to: me.to })), "ok");
      assert.equal(await codeOf(fake.command("debug.logs", { to: me.to })), "DIAG_RATE_LIMITED");
      fake.clock.advance(1000);
      assert.equal(await codeOf(fake.command("debug.logs", { to: me.to })), "ok");
      await assert.rejects(fake.command("debug.logs", { to: "A".repeat(44) }), /BAD_PARAMS|X25519/);
      await assert.rejects(fake.command("debug.logs", {}), /BAD_PARAMS/);
    } finally {
      fake.close();
    }
  });
});

describe("the heap snapshot's guards", () => {
  it("its right is named: neither * nor debug.* grants it", () => {
    assert.equal(allows(["*"], "debug.heap-snapshot"), false);
    assert.equal(allows(["debug.*"], "debug.heap-snapshot"), false);
    assert.equal(allows(["debug.*"], "debug.logs"), true);
    assert.equal(allows(["debug.heap-snapshot"], "debug.heap-snapshot"), true);
  });

  it("the room is the cgroup's limit less its use (v1 and v2), never more than MemAvailable", () => {
    const tree = (files: Record<string, string>) => {
      const root = tempDir("outpost-cgroup-");
      for (const [path, text] of Object.entries(files)) {
        mkdirSync(join(root, path, ".."), { recursive: true });
        writeFileSync(join(root, path), text);
      }
      return { procRoot: join(root, "proc"), cgroupRoot: join(root, "cg") };
    };
    const MiB = 1024 * 1024;
    const meminfo = `MemTotal: 4000000 kB\nMemAvailable: ${1024 * 1024} kB\n`;
    const v2 = tree({
      "proc/self/cgroup": "0::/system.slice/outpost.service\n",
      "proc/meminfo": meminfo,
      "cg/system.slice/outpost.service/memory.max": `${384 * MiB}\n`,
      "cg/system.slice/outpost.service/memory.current": `${300 * MiB}\n`,
    });
    assert.deepEqual(memoryRoom(v2), { room: 84 * MiB, limit: 384 * MiB, usage: 300 * MiB, available: 1024 * MiB });
    const v1 = tree({
      "proc/self/cgroup": "12:memory:/system.slice/outpost.service\n11:cpu,cpuacct:/system.slice\n",
      "proc/meminfo": meminfo,
      "cg/memory/system.slice/outpost.service/memory.limit_in_bytes": `${384 * MiB}\n`,
      "cg/memory/system.slice/outpost.service/memory.usage_in_bytes": `${100 * MiB}\n`,
    });
    assert.equal(memoryRoom(v1).room, 284 * MiB);
    // Page cache the kernel reclaims first is not use; a parent's lower limit is the limit (a second review).
    const cached = tree({
      "proc/self/cgroup": "12:memory:/system.slice/outpost.service\n",
      "proc/meminfo": meminfo,
      "cg/memory/system.slice/outpost.service/memory.limit_in_bytes": `${384 * MiB}\n`,
      "cg/memory/system.slice/outpost.service/memory.usage_in_bytes": `${380 * MiB}\n`,
      "cg/memory/system.slice/outpost.service/memory.stat": `total_inactive_file ${200 * MiB}\nhierarchical_memory_limit ${300 * MiB}\n`,
    });
    assert.deepEqual(memoryRoom(cached), {
      room: 120 * MiB,
      limit: 300 * MiB,
      usage: 180 * MiB,
      available: 1024 * MiB,
    });
    const parent = tree({
      "proc/self/cgroup": "0::/edge.slice/outpost.service\n",
      "proc/meminfo": meminfo,
      "cg/edge.slice/memory.max": `${256 * MiB}\n`,
      "cg/edge.slice/outpost.service/memory.max": "max\n",
      "cg/edge.slice/outpost.service/memory.current": `${150 * MiB}\n`,
      "cg/edge.slice/outpost.service/memory.stat": `anon ${100 * MiB}\ninactive_file ${50 * MiB}\n`,
    });
    assert.equal(memoryRoom(parent).room, 156 * MiB);
    // No limit (v2 "max", v1's huge number): MemAvailable alone.
    const none = tree({
      "proc/self/cgroup": "0::/user.slice\n",
      "proc/meminfo": meminfo,
      "cg/user.slice/memory.max": "max\n",
    });
    assert.equal(memoryRoom(none).room, 1024 * MiB);
  });
});
