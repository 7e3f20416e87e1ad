// Issue 28, item 2: the tail of each run in the state directory, handed on at the next start, bounded; and how
// the run before ended, from systemd's line (ExecStopPost=) or from its own last line.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { appendExitLine, LogTail, previousTail, TAIL_DIR, TAIL_FILE_BYTES } from "../../src/core/log-tail.ts";
import { howItEnded } from "../../src/diagnostics/module.ts";
import { tempDir } from "../helpers/temp.ts";

const line = (msg: string, extra = "") => `${JSON.stringify({ level: "info", msg })}${extra}\n`;

describe("the log tail", () => {
  it("each start hands the run before's tail on; a run keeps at most two files of 256 KiB", () => {
    const state = tempDir("outpost-tail-");
    const first = LogTail.open(state);
    assert.ok(first);
    first.write(line("agent starting"));
    first.write(line("agent stopped"));
    assert.deepEqual(previousTail(state), [], "no run before the first");
    const second = LogTail.open(state);
    assert.ok(second);
    assert.deepEqual(
      previousTail(state).map((l) => JSON.parse(l).msg),
      ["agent starting", "agent stopped"],
    );
    // 1.5 MiB of lines: the oldest go, the newest stay, the files stay within their bound.
    const pad = "x".repeat(1000);
    for (let i = 0; i < 1500; i++) second.write(line(`n${i}`, "").replace('"}', `","pad":"${pad}"}`));
    for (const f of readdirSync(join(state, TAIL_DIR))) {
      assert.ok(statSync(join(state, TAIL_DIR, f)).size <= TAIL_FILE_BYTES + 2000, f);
    }
    LogTail.open(state);
    const kept = previousTail(state).map((l) => JSON.parse(l).msg as string);
    assert.equal(kept.at(-1), "n1499");
    assert.ok(kept.length > 200 && kept.length < 600, String(kept.length));
    assert.equal(second.written > 1_500_000, true);
  });

  it("systemd's line lands in the tail; the ending reads it, or the last line without it", () => {
    const state = tempDir("outpost-tail-");
    const run = LogTail.open(state);
    run?.write(line("agent starting"));
    appendExitLine(state, { result: "watchdog", code: "dumped", status: "ABRT" });
    LogTail.open(state);
    const ended = howItEnded(previousTail(state));
    assert.deepEqual(
      { ...ended, at: typeof ended.at },
      { by: "systemd", result: "watchdog", code: "dumped", status: "ABRT", at: "string", lastLine: "no stop line" },
    );
    assert.deepEqual(howItEnded([line("agent starting"), line("agent stopped")]), {
      by: "log",
      note: "stopped cleanly (its last line is the stop)",
    });
    assert.match(String(howItEnded([line("agent starting")]).note), /without its stop line/);
    assert.equal(howItEnded([]).by, "none");
  });

  it("a second review: a dangling link is handed on, debug lines stay out, a huge line is cut, a FIFO never hangs", () => {
    const state = tempDir("outpost-tail-");
    const dir = join(state, TAIL_DIR);
    LogTail.open(state);
    rmSync(join(dir, "current.log"));
    symlinkSync(join(state, "nowhere"), join(dir, "current.log"));
    const tail = LogTail.open(state);
    assert.ok(tail, "a dangling link does not disable the tail");
    tail.write(line("kept"));
    tail.write(`${JSON.stringify({ level: "debug", msg: "not kept" })}\n`);
    tail.write(`${JSON.stringify({ level: "info", msg: "x".repeat(100_000) })}\n`);
    LogTail.open(state);
    const lines = previousTail(state).map((l) => JSON.parse(l) as { msg?: string; cut?: boolean });
    assert.deepEqual(
      lines.map((l) => l.msg ?? (l.cut ? "cut" : "?")),
      ["kept", "cut"],
    );
    rmSync(join(dir, "current.log"));
    execFileSync("mkfifo", [join(dir, "current.log")]);
    assert.throws(() => appendExitLine(state, { result: "signal", code: "killed", status: "KILL" }), /ENXIO/);
  });

  it("a link planted as the tail is never followed: not read through, not written through", () => {
    const state = tempDir("outpost-tail-");
    const target = join(state, "elsewhere");
    writeFileSync(target, "");
    LogTail.open(state);
    const dir = join(state, TAIL_DIR);
    for (const f of readdirSync(dir)) rmSync(join(dir, f));
    symlinkSync(target, join(dir, "current.log"));
    // The link is handed on as the previous tail (a rename moves the link, never what it points to) ...
    const tail = LogTail.open(state);
    assert.ok(tail);
    tail.write(line("x"));
    // ... and reading it does not follow it.
    assert.deepEqual(previousTail(state), []);
    assert.equal(statSync(target).size, 0);
  });
});
