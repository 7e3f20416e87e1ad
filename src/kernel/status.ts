import type { Snapshot } from "../config/store.ts";
import type { Clock } from "../core/clock.ts";
import type { LinkMessage, ProtocolVersion } from "../mqtt/link.ts";
import { VERSION } from "../version.ts";

export interface StatusInputs {
  topic: string;
  session: string;
  clock: Clock;
  clockSynced: () => boolean;
  config: Snapshot;
  protocolVersion: ProtocolVersion;
  /** Whether command replay records can be stored. */
  replayStore: boolean;
  /** The device's own key (kernel/identity.ts): what a pinned operator checks its answers against. */
  identity: { publicKey: string; fingerprint: string };
  /** The modules' fields (the board, say). */
  extra?: () => Record<string, unknown>;
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
      arch: process.arch,
      protocolVersion: s.protocolVersion,
      configVersion: s.config.version,
      configHash: s.config.hash,
      // "unavailable": commands that change state are refused until state.dir can be written.
      replayStore: s.replayStore ? "ok" : "unavailable",
      deviceKey: s.identity.publicKey,
      fingerprint: s.identity.fingerprint,
    }),
  };
}
