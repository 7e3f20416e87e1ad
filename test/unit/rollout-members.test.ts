// Issue 26: who is in a group when a rollout freezes it. Members offline now count only from their own recent
// status, signed by their pinned key: an old, stale, forged, unpinned or unsigned one brings nobody in.
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { describe, it } from "node:test";
import { AnswerTrust } from "../../src/cli/answer-trust.ts";
import { brokerId, KnownDevices } from "../../src/cli/known-devices.ts";
import { MEMBER_STATUS_MAX_AGE_MS, membersFromStatuses } from "../../src/cli/rollout-members.ts";
import { signAnswer } from "../../src/commands/answers.ts";
import { publicKeyText } from "../../src/commands/keys.ts";

const P = "outpost/v1";
const BROKER = "mqtt://127.0.0.1:1883";
const NOW = Date.UTC(2026, 11, 7);

function device(id: string) {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  return { id, pub: publicKeyText(publicKey), privateKey };
}

describe("rollout members from statuses", () => {
  it("a pinned member offline now counts from its recent signed status; nothing else brings a device in", () => {
    const pins = KnownDevices.none();
    const trust = new AnswerTrust({ pins, broker: BROKER, prefix: P, acceptNew: false });
    const other = device("forger");
    const say = (
      id: string,
      body: Record<string, unknown>,
      o: { pinned?: boolean; key?: ReturnType<typeof device>; signed?: boolean } = {},
    ) => {
      const d = device(id);
      if (o.pinned !== false) pins.pin({ broker: brokerId(BROKER), prefix: P, device: id, key: d.pub });
      const topic = `${P}/${id}/status`;
      const json = JSON.stringify({ state: "offline", device: id, ...body });
      trust.sawStatus(id, topic, o.signed === false ? json : signAnswer((o.key ?? d).privateKey, id, topic, json));
    };
    const fresh = { groups: ["line-3"], clockSynced: true, ts: NOW - 60_000 };
    say("in", fresh);
    say("answered", fresh);
    say("other-group", { ...fresh, groups: ["line-4"] });
    say("stale", { ...fresh, ts: NOW - MEMBER_STATUS_MAX_AGE_MS - 1 });
    say("ahead", { ...fresh, ts: NOW + 60 * 60_000 });
    say("unsynced-1970", { ...fresh, clockSynced: false, ts: 86_400_000 });
    say("no-groups", { clockSynced: true, ts: NOW - 60_000 });
    say("groups-not-array", { ...fresh, groups: "line-3" });
    say("unpinned", fresh, { pinned: false });
    say("forged", fresh, { key: other });
    say("lost-will", { ...fresh, state: "lost" }, { signed: false });
    assert.deepEqual(membersFromStatuses(trust, "line-3", new Set(["answered"]), NOW), ["in"]);
    assert.deepEqual(membersFromStatuses(trust, "line-4", new Set(), NOW), ["other-group"]);
  });
});
