import type { KeyObject } from "node:crypto";
import { signAnswer } from "../commands/answers.ts";
import type { Snapshot } from "../config/store.ts";
import type { Clock } from "../core/clock.ts";
import type { LinkMessage, ProtocolVersion } from "../mqtt/link.ts";
import type { DeviceTopics } from "../mqtt/topics.ts";
import type { Priority } from "../outbox/types.ts";
import { VERSION } from "../version.ts";
import type { RetainedOptions } from "./retained.ts";

export interface StatusInputs {
  topic: string;
  session: string;
  clock: Clock;
  clockSynced: () => boolean;
  config: Snapshot;
  /** The groups whose commands it takes. */
  groups: readonly string[];
  protocolVersion: ProtocolVersion;
  /** Whether command replay records can be stored. */
  replayStore: boolean;
  /** The device's own key (kernel/identity.ts): what a pinned operator checks its answers against. */
  identity: { publicKey: string; fingerprint: string };
  /** The modules' fields (the board, say). */
  extra?: () => Record<string, unknown>;
}

export interface AnswerSigner {
  /** A message of the outbox (a reply, on whatever response topic; a result, an alarm, an event). */
  message(topic: string, payload: string): string;
  /** The outbox's signing: every class but telemetry, which only while `telemetry.sign` is on. */
  outbox(telemetrySigned: () => boolean): (topic: string, payload: string, priority: Priority) => string;
  /**
   * Retained values: signed under the device's own topics, but for telemetry's (the full sample, Home
   * Assistant's state); those also carry the session and a seq (kernel/retained.ts).
   */
  retained: Required<RetainedOptions>;
}

/**
 * The device's signature on what it says that an operator acts on (commands/answers.ts): replies, results,
 * alarms and events, the retained status, update and alarm states. Telemetry is not signed (its cost per
 * message), nor anything not a JSON object's text, nor Home Assistant's discovery configs (not the device's
 * topics: Home Assistant reads them).
 */
export function answerSigner(key: KeyObject, deviceId: string, topics: DeviceTopics, session: string): AnswerSigner {
  const own = topics.status.slice(0, -"status".length);
  const telemetry = new Set([topics.telemetryFull, topics.state]);
  const sign = (topic: string, payload: string) =>
    payload.startsWith("{") && payload.endsWith("}") ? signAnswer(key, deviceId, topic, payload) : payload;
  const signsRetained = (topic: string) => topic.startsWith(own) && !telemetry.has(topic);
  return {
    message: sign,
    outbox: (telemetrySigned) => (topic, payload, priority) =>
      priority === "telemetry" && !telemetrySigned() ? payload : sign(topic, payload),
    retained: { sign: (t, p) => (signsRetained(t) ? sign(t, p) : p), session, sequenced: signsRetained },
  };
}

/** The status message, signed but for the will (`lost`): it is sent by the broker, long after it was made. */
export function signedStatus(signer: AnswerSigner, state: "online" | "offline" | "lost", s: StatusInputs): LinkMessage {
  const message = statusMessage(state, s);
  if (state === "lost" || typeof message.payload !== "string") return message;
  return { ...message, payload: signer.retained.sign(message.topic, message.payload) };
}

/** The retained `P/D/status` message: the birth (`online`), the will (`lost`) and the farewell (`offline`). */
export function statusMessage(state: "online" | "offline" | "lost", s: StatusInputs): LinkMessage {
  return {
    topic: s.topic,
    qos: 1,
    retain: true,
    payload: JSON.stringify({
      ...s.extra?.(),
      state,
      session: s.session,
      version: VERSION,
      ts: s.clock.now(),
      mono: Math.round(s.clock.mono()),
      clockSynced: s.clockSynced(),
      device: s.config.config.device.id,
      // Signed with the rest: a rollout to a group counts a member that is offline now from its last status.
      groups: s.groups,
      arch: process.arch,
      protocolVersion: s.protocolVersion,
      configVersion: s.config.version,
      configHash: s.config.hash,
      // "unavailable": commands that change state are refused until state.dir can be written.
      replayStore: s.replayStore ? "ok" : "unavailable",
      // The forms of command names this agent takes in topics (mqtt/topics.ts): `task.list` and `task_list`.
      commandForms: ["dotted", "flat"],
      deviceKey: s.identity.publicKey,
      fingerprint: s.identity.fingerprint,
    }),
  };
}
