// Who is in a group when a rollout freezes it (ctl rollout --group): the members that answered a signed ping,
// and those offline now that said so themselves, recently, in a status signed by their pinned key.
import type { AnswerTrust } from "./answer-trust.ts";

/**
 * How old a member's last status may be and still count. A device's groups are its own claim, and a status
 * stays retained for good: a decommissioned device, or an old status of a device that has since left the
 * group, published again, must not bring it into the group's rollouts.
 */
export const MEMBER_STATUS_MAX_AGE_MS = 7 * 24 * 60 * 60 * 1000;
/** A status dated this far ahead of ctl's clock is not believed either. */
const AHEAD_MS = 5 * 60 * 1000;

/**
 * The pinned devices that did not answer but whose retained status, verified against their pinned key, names
 * `group`, dated within MEMBER_STATUS_MAX_AGE_MS of ctl's clock. The `lost` will is unsigned and never counts.
 * A device's unsynced clock (a board without an RTC boots in 1970) dates its status in the past, which leaves it
 * out: the window fails safe, so `clockSynced` is not required (chrony and ntpd do not set it).
 */
export function membersFromStatuses(trust: AnswerTrust, group: string, answered: ReadonlySet<string>, now: number) {
  return trust
    .statusDevices()
    .filter((d) => !answered.has(d) && trust.pinOf(d) !== undefined)
    .filter((d) => {
      const s = trust.status(d);
      if (s?.verdict.trust !== "verified") return false;
      const { groups, ts } = s.body;
      return (
        Array.isArray(groups) &&
        groups.includes(group) &&
        typeof ts === "number" &&
        ts >= now - MEMBER_STATUS_MAX_AGE_MS &&
        ts <= now + AHEAD_MS
      );
    })
    .sort();
}
