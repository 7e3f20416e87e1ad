import { OutpostError } from "../core/errors.ts";
import type { TrialJournal } from "./journal.ts";

/**
 * Where an update stands for this agent: one value, changed only by `transition`. The retained `P/D/update`
 * message is what operators see; this is what the agent waits for.
 */
export type Phase =
  /** Before the module has read where the last update stands (root's records, its journal): no command yet. */
  | { name: "starting" }
  /** Nothing in hand: an `update` command may start. */
  | { name: "idle" }
  /** An `update` command is fetching and verifying a release (or handing a model to its task). */
  | { name: "downloading"; request: string }
  /** A release is staged and `install.json` written: root's installer takes it, or refuses it by request id. */
  | { name: "installing"; request: string | undefined; since: number }
  /** This release is the one on trial: it commits once healthy, or gives up at the deadline. */
  | { name: "trial"; journal: TrialJournal; started: number; deadline: number }
  /** The trial failed: the rollback unit switches back and restarts the service; nothing more to do here. */
  | { name: "rolling-back" };

export type PhaseName = Phase["name"];

export type PhaseEvent =
  | { type: "resumed" }
  | { type: "update"; request: string }
  | { type: "staged"; request: string; at: number }
  | { type: "done" }
  | { type: "resume-installing"; request: string | undefined; at: number }
  | { type: "resume-trial"; journal: TrialJournal; at: number; timeoutMs: number }
  | { type: "committed" }
  | { type: "trial-failed" }
  | { type: "install-refused" }
  | { type: "install-timed-out" };

export type EventType = PhaseEvent["type"];

/**
 * Every allowed transition, from a phase on an event to the next phase: the table `transition` follows and
 * docs/ota.md's diagram of the agent's phases is drawn from (`phaseDiagram`).
 */
export const TRANSITIONS = {
  starting: { resumed: "idle", "resume-installing": "installing", "resume-trial": "trial" },
  idle: { update: "downloading" },
  // "done": the download failed, a model was tried, or a release was staged where nothing installs it.
  downloading: { staged: "installing", done: "idle" },
  installing: { "install-refused": "idle", "install-timed-out": "idle" },
  trial: { committed: "idle", "trial-failed": "rolling-back" },
  "rolling-back": {},
} as const satisfies Record<PhaseName, Partial<Record<EventType, PhaseName>>>;

/** The next phase; an event the table does not allow in this phase is a bug, and throws. */
export function transition(phase: Phase, event: PhaseEvent): Phase {
  const allowed: Partial<Record<EventType, PhaseName>> = TRANSITIONS[phase.name];
  const next = allowed[event.type];
  if (next === undefined) throw new Error(`update: ${event.type} is not a transition from ${phase.name}`);
  switch (event.type) {
    case "update":
      return { name: "downloading", request: event.request };
    case "staged":
      return { name: "installing", request: event.request, since: event.at };
    case "resume-installing":
      return { name: "installing", request: event.request, since: event.at };
    case "resume-trial":
      return { name: "trial", journal: event.journal, started: event.at, deadline: event.at + event.timeoutMs };
    case "trial-failed":
      return { name: "rolling-back" };
    default:
      return { name: "idle" };
  }
}

/** The table as a Mermaid state diagram (docs/ota.md shows it; a test keeps the two the same). */
export function phaseDiagram(): string {
  const id = (name: string) => name.replace("-", "_");
  const lines = ["stateDiagram-v2", "    [*] --> starting"];
  for (const [from, events] of Object.entries(TRANSITIONS)) {
    for (const [event, to] of Object.entries(events)) lines.push(`    ${id(from)} --> ${id(to)}: ${event}`);
  }
  return lines.join("\n");
}

/** Why an update cannot start now (`OTA_BUSY`). */
export function busyError(name: Phase["name"]): OutpostError {
  if (name === "downloading") return new OutpostError("OTA_BUSY", "an update is already running");
  if (name === "starting") return new OutpostError("OTA_BUSY", "the update module is still starting");
  return new OutpostError("OTA_BUSY", `an update is ${name.replace("-", " ")}`);
}
