/** What the CLI needs from the process; only main.ts builds one from the real process. */
export interface Host {
  env: Readonly<Record<string, string | undefined>>;
  hostname: string;
  stdout: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  stderr: NodeJS.WritableStream;
  /** Resolves with the signal name when the first stop signal (SIGTERM, SIGINT) arrives. */
  stopRequested: Promise<string>;
}

export const EXIT = { OK: 0, FAILURE: 1, USAGE: 64, CONFIG: 78 } as const;

export class UsageError extends Error {}
