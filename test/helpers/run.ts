import { execFile } from "node:child_process";

export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs a program to completion and never throws on a non-zero exit (tests assert the code); a timeout or a
 * signal counts as code 1.
 */
export function run(
  argv: string[],
  options: { timeoutMs?: number; env?: NodeJS.ProcessEnv; input?: string } = {},
): Promise<Ran> {
  const [cmd = "", ...args] = argv;
  return new Promise((resolve) => {
    const child = execFile(
      cmd,
      args,
      {
        timeout: options.timeoutMs ?? 30_000,
        // A process stuck at exit (nodejs/node#54918) no longer runs its SIGTERM handler: fail now, not at
        // the test's own timeout.
        killSignal: "SIGKILL",
        maxBuffer: 16 * 1024 * 1024,
        ...(options.env ? { env: options.env } : {}),
      },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
    if (options.input !== undefined) child.stdin?.end(options.input);
  });
}
