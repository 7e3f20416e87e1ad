// Run as `node --expose-gc test/helpers/idle-heap.ts BROKER_PORT DIR` (issue 27, item 6): the agent from this
// checkout, as `outpost run` starts it, with 1 s telemetry and nothing else configured; once it has published
// telemetry a few times and settled, a full GC, then the V8 heap in use, printed as JSON, and a clean stop.
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
    state: { dir: join(dir, "state") },
  }),
);
const watch = await Watch.open(Number(port), [`outpost/v1/${id}/telemetry`]);
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
  // Five cycles: every collector has run, and the first cycle's one-off work is behind it.
  await watch.waitFor(() => watch.items.length >= 5, 60_000, "five telemetry messages");
  for (let i = 0; i < 4; i++) gc();
  const heap = getHeapStatistics();
  process.stdout.write(`${JSON.stringify({ usedHeap: heap.used_heap_size, totalHeap: heap.total_heap_size })}\n`);
} finally {
  stop("SIGTERM");
  await ran;
  await watch.close();
}
