// The only module that touches the process: arguments, environment, signals and exit.
import { hostname } from "node:os";
import { cli } from "./cli/cli.ts";
import type { Host } from "./cli/host.ts";

// onnxruntime-node sends usage telemetry to Microsoft by default (a device id under ~/.cache/Microsoft, an event
// queue, /tmp/mat-debug-<pid>.log). Off for the whole process before any worker loads the binding: the native
// library reads the process's own environment, which only the main thread sets (a worker's is a copy).
process.env.ORT_DISABLE_TELEMETRY = "1";
// MQTT.js would send every connection through a SOCKS proxy named here; the binary is built without that
// transport (build/build.ts), and a proxy the configuration does not name is not one to take silently.
if (process.env.MQTTJS_SOCKS_PROXY !== undefined) {
  process.stderr.write("outpost: MQTTJS_SOCKS_PROXY is ignored: Outpost connects to its brokers directly\n");
  delete process.env.MQTTJS_SOCKS_PROXY;
}

let firstSignal: ((name: string) => void) | undefined;
const stopRequested = new Promise<string>((resolve) => {
  firstSignal = resolve;
});
let signals = 0;
const onSignal = (name: NodeJS.Signals) => {
  signals += 1;
  if (signals === 1) {
    firstSignal?.(name);
    return;
  }
  process.stderr.write(`outpost: second ${name}, exiting now\n`);
  process.exit(1);
};
process.on("SIGTERM", onSignal);
process.on("SIGINT", onSignal);
// SIGHUP reloads the configuration in `run`; with no listener it must still not kill the process.
const hangupListeners = new Set<() => void>();
process.on("SIGHUP", () => {
  for (const listener of hangupListeners) listener();
});

// From a checkout (src/main.ts on the pinned Node) the way back in is npm; a built binary is run again the way
// it was started (`outpost` from PATH, `./dist/outpost-linux-x64`), which argv0 keeps.
const fromSource = process.argv[1]?.endsWith("main.ts") === true;
const host: Host = {
  env: process.env,
  invocation: fromSource ? "npm run -s outpost --" : process.argv0 || process.execPath,
  ...(fromSource ? {} : { executable: process.execPath }),
  uid: process.getuid?.(),
  pid: process.pid,
  isAlive: (pid) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch (err) {
      // EPERM: it runs, as someone else.
      return (err as NodeJS.ErrnoException).code === "EPERM";
    }
  },
  hostname: hostname(),
  stdout: process.stdout,
  stderr: process.stderr,
  stdin: process.stdin,
  stopRequested,
  onHangup: (listener) => {
    hangupListeners.add(listener);
    return () => hangupListeners.delete(listener);
  },
};

/**
 * Exits once what was written is out. A parent's pipe may be a socket (Node's child_process, journald), written
 * asynchronously: process.exit() right after a long output cut it (`ctl devices` listed 172 of 1,000).
 */
function exit(code: number): void {
  let pending = 2;
  const done = () => {
    if (--pending === 0) process.exit(code);
  };
  process.stdout.write("", done);
  process.stderr.write("", done);
}

cli(process.argv.slice(2), host).then(exit, (err: unknown) => {
  process.stderr.write(`outpost: ${String(err)}\n`);
  exit(1);
});
