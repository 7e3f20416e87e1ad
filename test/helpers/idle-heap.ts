// Run as `node --expose-gc test/helpers/idle-heap.ts BROKER_PORT DIR` (issue 27, item 6): the agent from this
// checkout, as `outpost run` starts it, with 1 s telemetry and nothing else configured; once it has published
// telemetry and settled, a full GC, then the V8 heap in use as a line of JSON on stdout, and a clean stop.
// One figure that a dependency added or a cache that grows moves, and that a busy machine does not.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { getHeapStatistics } from "node:v8";
import { cli } from "../../src/cli/cli.ts";
import { Watch } from "./mqtt-watch.ts";

const [port = "", dir = ""] = process.argv.slice(2);
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error("run with --expose-gc");
const id = "budget-idle";
const config = join(dir, "config.yaml");
writeFileSync(
  config,
  JSON.stringify({
    device: { id },
    mqtt: { url: `mqtt://127.0.0.1:${port}` },
    telemetry: { interval: "1s" },
    log: { level: "warn" },
    state: { dir: join(dir, "state") },
  }),
);
// Without mqtt-packet's number cache, as the agent's own clients go (src/mqtt/options.ts): the switch is global
// to the process, and a watch that made the cache first would count it in the agent's heap.
const watch = await Watch.open(Number(port), [`outpost/v1/${id}/telemetry`], { writeCache: false });
let stop: (name: string) => void = () => {};
const stopRequested = new Promise<string>((resolve) => {
  stop = resolve;
});
const quiet = new PassThrough().resume();
const ran = cli(["run", "--config", config], {
  env: {},
  hostname: "budget",
  stdout: quiet,
  stderr: quiet,
  stopRequested,
  onHangup: () => () => {},
});
try {
  // The first telemetry, then 5 s more of 1 s cycles (each publishes only what moved past its deadband): every
  // collector has run, and the first cycle's one-off work is behind it.
  await watch.waitFor(() => true, 60_000, "the first telemetry");
  await new Promise((r) => setTimeout(r, 5000));
  for (let i = 0; i < 4; i++) gc();
  const heap = getHeapStatistics();
  process.stdout.write(`${JSON.stringify({ usedHeap: heap.used_heap_size, totalHeap: heap.total_heap_size })}\n`);
} finally {
  stop("SIGTERM");
  await ran;
  await watch.close();
}
