/** What the CLI needs from the process; only main.ts builds one from the real process. */
export interface Host {
  env: Readonly<Record<string, string | undefined>>;
  hostname: string;
  stdout: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  stderr: NodeJS.WritableStream;
  /** Standard input, read to its end (`--params -`). */
  stdin?: NodeJS.ReadableStream;
  /** Resolves with the signal name when the first stop signal (SIGTERM, SIGINT) arrives. */
  stopRequested: Promise<string>;
  /** Calls `listener` on each SIGHUP (reload the configuration); returns the way to stop listening. */
  onHangup(listener: () => void): () => void;
  /** The single executable's own path; undefined when running from source (install copies this file). */
  executable?: string;
  /** The effective user id (install refuses without root). */
  uid?: number;
  /** How a person runs this program again where it was started (the binary's path, or npm from a checkout). */
  invocation?: string;
  /** This process's id, and whether another process on this machine still runs (a rollout's lease). */
  pid?: number;
  isAlive?(pid: number): boolean;
}

/** 75 (EX_TEMPFAIL) after the `restart` command: non-zero, so that systemd's Restart=on-failure starts us again. */
/** 69 is sysexits' EX_UNAVAILABLE: `ctl` could not connect to the broker at all. */
/**
 * 65 (EX_DATAERR): `ctl` was sent a forged answer (a bad signature, a changed device key, a replayed answer).
 * 77 (EX_NOPERM): an answer `ctl` cannot verify (an unpinned device, an agent that does not sign) did not count.
 */
export const EXIT = {
  OK: 0,
  FAILURE: 1,
  USAGE: 64,
  FORGED: 65,
  UNAVAILABLE: 69,
  RESTART: 75,
  UNVERIFIED: 77,
  CONFIG: 78,
} as const;

export class UsageError extends Error {}

/** The command line that runs this program again where it runs now: `outpost`, a binary's path, or npm. */
export function me(host: Host): string {
  return host.invocation ?? "outpost";
}
