import { join } from "node:path";
import { pino } from "pino";
import type { Collector } from "../../src/kernel/module.ts";
import { detectBoard } from "../../src/telemetry/boards/detect.ts";
import { systemCollectors } from "../../src/telemetry/collectors.ts";
import { boardCollectors } from "../../src/telemetry/module.ts";
import type { Roots } from "../../src/telemetry/sysfs.ts";
import { Telemetry } from "../../src/telemetry/telemetry.ts";
import { ROOT } from "./agent-process.ts";

export const BOARD_FIXTURES = join(ROOT, "test", "fixtures", "boards");

/** The roots of a fixture tree (a name under test/fixtures/boards, or a path to a copy). */
export function fixtureRoots(nameOrPath: string): Roots {
  const base = nameOrPath.includes("/") ? nameOrPath : join(BOARD_FIXTURES, nameOrPath);
  return { proc: join(base, "proc"), sys: join(base, "sys"), host: join(base, "host") };
}

/** One sample of the generic collectors and the board's, reading a fixture tree, plus any `extra` ones. */
export async function fixtureSample(nameOrPath: string, extra: (roots: Roots) => Collector[] = () => []) {
  const roots = fixtureRoots(nameOrPath);
  const board = detectBoard(roots);
  const telemetry = new Telemetry({
    collectors: [
      ...systemCollectors({ procRoot: roots.proc, sysRoot: roots.sys }),
      ...boardCollectors(board, roots),
      ...extra(roots),
    ],
    intervalMs: () => 1000,
    timeoutMs: () => 5000,
    publish: () => {},
    logger: pino({ level: "silent" }),
  });
  return { board, ...(await telemetry.sample()) };
}
