import { existsSync } from "node:fs";
import { join } from "node:path";

/**
 * Whether the system clock is known to be synchronised. systemd-timesyncd creates this file once it has
 * synchronised; chrony and ntpd users can point `runRoot` elsewhere in later versions. A board without an
 * RTC boots in the past, so consumers need this flag to trust `ts`.
 */
export function clockSyncProbe(runRoot = "/run"): () => boolean {
  const marker = join(runRoot, "systemd", "timesync", "synchronized");
  let synced = false;
  return () => {
    // Once synchronised, the kernel keeps the clock disciplined; stop touching the filesystem.
    if (!synced) synced = existsSync(marker);
    return synced;
  };
}
