import { existsSync } from "node:fs";
import { join } from "node:path";

/** How often an unsynchronised clock is looked at again: every message asks, and a stat each was a syscall each. */
export const CLOCK_SYNC_RECHECK_MS = 1000;

/**
 * Whether the system clock is known to be synchronised. systemd-timesyncd creates this file once it has
 * synchronised; chrony and ntpd users can point `runRoot` elsewhere in later versions. A board without an
 * RTC boots in the past, so consumers need this flag to trust `ts`.
 */
export function clockSyncProbe(runRoot = "/run", mono: () => number = () => performance.now()): () => boolean {
  const marker = join(runRoot, "systemd", "timesync", "synchronized");
  let synced = false;
  let checkedAt = Number.NEGATIVE_INFINITY;
  return () => {
    // Once synchronised, the kernel keeps the clock disciplined; stop touching the filesystem. Until then, a
    // board without timesyncd (chrony, ntpd) would stat the marker for every message it sends: once a second
    // is enough for a flag that only ever errs on the side of distrust.
    if (synced) return true;
    const now = mono();
    if (now - checkedAt < CLOCK_SYNC_RECHECK_MS) return false;
    checkedAt = now;
    synced = existsSync(marker);
    return synced;
  };
}
