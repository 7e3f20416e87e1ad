// Issue 24, item 5: the update module's five mutable variables became one explicit phase with one transition
// function; docs/ota.md's diagram of the phases is drawn from its table and must stay so.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import type { TrialJournal } from "../../src/ota/journal.ts";
import { type Phase, type PhaseEvent, phaseDiagram, TRANSITIONS, transition } from "../../src/ota/phase.ts";
import { ROOT } from "../helpers/agent-process.ts";

const journal = {
  state: "trial",
  release: "1.2.0-abcdefabcdef",
  from: { version: "1.1.0" },
  to: { version: "1.2.0" },
  since: 0,
} as unknown as TrialJournal;

const events: PhaseEvent[] = [
  { type: "resumed" },
  { type: "update", request: "r1" },
  { type: "staged", request: "r1", at: 5 },
  { type: "done" },
  { type: "resume-installing", request: undefined, at: 1 },
  { type: "resume-trial", journal, at: 10, timeoutMs: 100 },
  { type: "committed" },
  { type: "trial-failed" },
  { type: "install-refused" },
  { type: "install-timed-out" },
];

const phases: Phase[] = [
  { name: "starting" },
  { name: "idle" },
  { name: "downloading", request: "r1" },
  { name: "installing", request: "r1", since: 0 },
  { name: "trial", journal, started: 0, deadline: 100 },
  { name: "rolling-back" },
];

describe("the update module's phases", () => {
  it("moves only along the table, and throws on anything else", () => {
    for (const phase of phases) {
      for (const event of events) {
        const allowed: Partial<Record<string, string>> = TRANSITIONS[phase.name];
        const to = allowed[event.type];
        if (to === undefined) {
          assert.throws(() => transition(phase, event), /is not a transition/, `${event.type} in ${phase.name}`);
        } else {
          assert.equal(transition(phase, event).name, to, `${event.type} in ${phase.name}`);
        }
      }
    }
  });

  it("keeps what a phase waits on: the request root answers, the trial's deadline", () => {
    const installing = transition({ name: "downloading", request: "r7" }, { type: "staged", request: "r7", at: 42 });
    assert.deepEqual(installing, { name: "installing", request: "r7", since: 42 });
    const trial = transition({ name: "starting" }, { type: "resume-trial", journal, at: 10, timeoutMs: 100 });
    assert.deepEqual(trial, { name: "trial", journal, started: 10, deadline: 110 });
  });

  it("an update command cannot start before the module has resumed, nor during a trial", () => {
    assert.throws(() => transition({ name: "starting" }, { type: "update", request: "r" }));
    assert.throws(() => transition(phases[4] as Phase, { type: "update", request: "r" }));
  });

  it("docs/ota.md shows the diagram drawn from the table", () => {
    const doc = readFileSync(join(ROOT, "docs", "ota.md"), "utf8");
    assert.ok(doc.includes(`\`\`\`mermaid\n${phaseDiagram()}\n\`\`\``), "regenerate the ota-phases diagram");
  });
});
