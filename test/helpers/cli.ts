import { PassThrough } from "node:stream";
import { cli } from "../../src/cli/cli.ts";
import type { Host } from "../../src/cli/host.ts";

/**
 * Runs the command line in-process, as the binary would, with its output collected. `stopAfterMs`: a Ctrl-C
 * after that long, for commands that run until stopped.
 */
export async function runCli(
  argv: string[],
  env: Record<string, string> = {},
  stopAfterMs?: number,
  more: Partial<Host> = {},
) {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = "";
  let err = "";
  stdout.on("data", (c: Buffer) => {
    out += c.toString();
  });
  stderr.on("data", (c: Buffer) => {
    err += c.toString();
  });
  const stopRequested = new Promise<string>((resolve) => {
    if (stopAfterMs !== undefined) setTimeout(() => resolve("SIGINT"), stopAfterMs);
  });
  const host: Host = { env, hostname: "test-host", stdout, stderr, stopRequested, onHangup: () => () => {}, ...more };
  const started = performance.now();
  const code = await cli(argv, host);
  return { code, out, err, ms: performance.now() - started };
}
