// Issue 27, item 6: `npm run bench -- --only budget` runs the sections the small-device budget draws on and
// prints each of its rows against its goal, with the spread the section recorded in its note.
import type { BenchRow } from "./bench-board.ts";

/** The sections `budget` runs. */
export const BUDGET_SECTIONS = ["footprint", "outbox", "commands", "tasks", "staging"];

interface Goal {
  figure: string;
  /** The row it reads, by the start of its metric. */
  row: string;
  value: (r: BenchRow) => number;
  goal: number;
  unit: string;
  /** true: the figure must stay at or under the goal; false: at or over. */
  atMost: boolean;
}

const GOALS: Goal[] = [
  { figure: "idle RSS", row: "idle RSS", value: (r) => r.outpost, goal: 80, unit: "MiB", atMost: true },
  {
    figure: "  of which anonymous",
    row: "  of which anonymous",
    value: (r) => r.outpost,
    goal: 30,
    unit: "MiB",
    atMost: true,
  },
  {
    figure: "a worker holding the shipped model",
    row: "RSS with 0 / 1 / 2 workers",
    value: (r) => {
      const m = /0 workers ([\d.]+), 1 worker ([\d.]+)/.exec(r.note ?? "");
      return m ? Number(m[2]) - Number(m[1]) : Number.NaN;
    },
    goal: 25,
    unit: "MiB more",
    atMost: true,
  },
  {
    figure: "anonymous peak while staging, above idle",
    row: "anonymous memory peak while staging",
    value: (r) => r.outpost - (r.bare ?? Number.NaN),
    goal: 32,
    unit: "MiB",
    atMost: true,
  },
  {
    figure: "bytes on the wire, first install (MQTT)",
    row: "bytes on the wire, first install over MQTT",
    value: (r) => r.outpost,
    goal: 52,
    unit: "MiB",
    atMost: true,
  },
  {
    figure: "bytes on the wire, first install (HTTP)",
    row: "bytes on the wire, first install over HTTP",
    value: (r) => r.outpost,
    goal: 52,
    unit: "MiB",
    atMost: true,
  },
  {
    figure: "bytes on the wire, Node runtime change (MQTT)",
    row: "bytes on the wire, Node runtime change over MQTT",
    value: (r) => r.outpost,
    goal: 25,
    unit: "MiB",
    atMost: true,
  },
  {
    figure: "bytes on the wire, Node runtime change (HTTP)",
    row: "bytes on the wire, Node runtime change over HTTP",
    value: (r) => r.outpost,
    goal: 25,
    unit: "MiB",
    atMost: true,
  },
  {
    figure: "ping p99",
    row: "command round trip p99 (ping",
    value: (r) => r.outpost,
    goal: 5,
    unit: "ms",
    atMost: true,
  },
  {
    figure: "config.set p99",
    row: "command round trip p99 (config.set",
    value: (r) => r.outpost,
    goal: 10,
    unit: "ms",
    atMost: true,
  },
  {
    figure: "backlog drain vs bare MQTT.js",
    row: "backlog drain rate against mosquitto",
    value: (r) => r.outpost / (r.bare ?? Number.NaN),
    goal: 0.9,
    unit: "x",
    atMost: false,
  },
  {
    figure: "2 workers vs 1",
    row: "throughput, ",
    value: (r) => r.outpost / (r.bare ?? Number.NaN),
    goal: 1.7,
    unit: "x",
    atMost: false,
  },
];

/** The budget's table, from the rows the sections wrote. */
export function budgetTable(rows: BenchRow[]): string {
  const lines = [["figure", "measured", "goal", "", "spread (the section's note)"]];
  for (const g of GOALS) {
    const r = rows.find((x) => x.metric.startsWith(g.row));
    const v = r ? g.value(r) : Number.NaN;
    const met = Number.isNaN(v) ? "not measured" : (g.atMost ? v <= g.goal : v >= g.goal) ? "met" : "MISSED";
    lines.push([
      g.figure,
      Number.isNaN(v) ? "-" : `${v.toFixed(g.unit === "x" ? 2 : 1)} ${g.unit}`,
      `${g.atMost ? "<=" : ">="} ${g.goal} ${g.unit}`,
      met,
      (r?.note ?? "").slice(0, 110),
    ]);
  }
  const widths = (lines[0] ?? []).map((_, i) => Math.max(...lines.map((l) => (l[i] ?? "").length)));
  return `${lines.map((l) => l.map((c, i) => c.padEnd(widths[i] ?? 0)).join(" | ")).join("\n")}\n`;
}
