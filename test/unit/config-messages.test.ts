// Issue 10 item 5: every kind of problem the schema can report says what to write. On bbb3be8 these read
// "expected too small: expected number to be >=1", "expected int", "expected string, found number 10", printed a
// whole section (next to the secrets) and put a YAML error on the wrong line.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, it } from "node:test";
import { type ConfigProblem, formatProblems } from "../../src/config/load.ts";
import { loadAgentConfig } from "../../src/schema.ts";

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "outpost-messages-"));
});
after(() => rmSync(dir, { recursive: true, force: true }));

function lines(text: string): Map<string, string> {
  const path = join(dir, "c.yaml");
  writeFileSync(path, text);
  try {
    loadAgentConfig({ path, hostname: "h" });
  } catch (err) {
    const problems = (err as { details: ConfigProblem[] }).details;
    return new Map(problems.map((p, i) => [p.path, formatProblems(problems)[i] ?? ""]));
  }
  assert.fail("accepted");
}

it("numbers, whole numbers, lists, enums and durations say what to write", () => {
  const found = lines(
    [
      "outbox: { window: -3, commitMessages: 1.5 }",
      "telemetry: { interval: 10 }",
      "log: { level: loud }",
      "device: { groups: line-3 }",
      "commands: { allowUnsigned: yes }",
    ].join("\n"),
  );
  assert.match(found.get("outbox.window") ?? "", /expected a number of at least 1, found -3/);
  assert.match(found.get("outbox.commitMessages") ?? "", /expected a whole number, found 1\.5/);
  assert.match(found.get("telemetry.interval") ?? "", /expected a duration in quotes, like "10s".*found 10/);
  assert.match(
    found.get("log.level") ?? "",
    /expected one of fatal, error, warn, info, debug, trace, silent, found "loud"/,
  );
  assert.match(found.get("device.groups") ?? "", /expected a list, like \[a, b\], found "line-3"/);
  assert.match(found.get("commands.allowUnsigned") ?? "", /expected true or false, found "yes"/);
  for (const line of found.values()) assert.doesNotMatch(line, /too small|too big|>=|expected int\b|expected string\b/);
});

it("a rule over a section names the key and never prints the section or a secret", () => {
  const found = lines("mqtt: { password: hunter2, passwordFile: /etc/pw, url: mqtt://x }");
  const line = found.get("mqtt.passwordFile") ?? "";
  assert.match(line, /expected at most one of password and passwordFile/);
  assert.doesNotMatch(line, /hunter2|url|\{/);
});

it("a YAML error names the line where the problem is", () => {
  const found = lines("telemetry:\n  interval: [1s\noutbox: {}\n\n\n");
  const line = found.get("(file)") ?? "";
  assert.match(line, /line 2/);
});
