/** Terminal rendering of what a device publishes; shared by `demo` and `ctl watch`. */

import { mergeReport, valueAt } from "../core/merge.ts";
import type { MetricPath, Rail } from "../kernel/telemetry-port.ts";

export interface DeviceView {
  id: string;
  status?: Record<string, unknown>;
  /** The latest telemetry message, with `metrics` and `errors` merged from the full and partial samples so far. */
  telemetry?: Record<string, unknown>;
  /** When the last full sample this view holds was taken (live or the retained copy). */
  fullTs?: number;
  /** When the sample that carried the uptime was taken (uptime is sent with full samples only). */
  uptimeAt?: number;
  /** The latest task results, newest last. */
  results?: Record<string, unknown>[];
  received: number;
}

const RESULTS_SHOWN = 6;

/** One task result: task, file, verdict, label and score, or the error's code. */
export function resultLine(r: Record<string, unknown>): string {
  const input = obj(r.input);
  const source = typeof input.file === "string" ? input.file : String(input.sha256 ?? "-").slice(0, 12);
  const what = [String(r.task ?? "-"), source];
  if (r.ok !== true) return [...what, "error", String(obj(r.error).code ?? "-")].join(" ");
  const ms = num(r.runMs);
  return [
    ...what,
    String(r.verdict ?? "done").toUpperCase(),
    String(r.label ?? (r.failedCheck ? `failed ${String(r.failedCheck)}` : "")),
    r.score === undefined ? "" : fmt(num(r.score), "", 3),
    ms === undefined ? "" : `${fmt(ms, " ms", 2)}`,
  ]
    .filter(Boolean)
    .join(" ");
}

const MiB = 1024 * 1024;

function num(value: unknown): number | undefined {
  return typeof value === "number" && Number.isFinite(value) ? value : undefined;
}

function obj(value: unknown): Record<string, unknown> {
  return value !== null && typeof value === "object" ? (value as Record<string, unknown>) : {};
}

function fmt(value: number | undefined, unit = "", digits = 1): string {
  return value === undefined ? "-" : `${value.toFixed(digits)}${unit}`;
}

/** A figure of a telemetry message's metrics, named by its path in the telemetry's shape (wire data: checked). */
function figure(m: Record<string, unknown>, path: MetricPath): number | undefined {
  return num(valueAt(m, path));
}

/** An object of a telemetry message's metrics ({} when absent or not an object). */
function part(m: Record<string, unknown>, path: MetricPath): Record<string, unknown> {
  return obj(valueAt(m, path));
}

/** One line summarising the latest telemetry; what a non-terminal sees once per message. */
export function telemetryLine(device: DeviceView): string {
  const t = obj(device.telemetry);
  const m = obj(t.metrics);
  const used = figure(m, "memory.used");
  return [
    `${device.id}`,
    `seq=${num(t.seq) ?? "-"}`,
    `cpu=${fmt(figure(m, "cpu.load"), "%")}`,
    `mem=${used === undefined ? "-" : `${(used / MiB).toFixed(0)}MiB`}`,
    `temp=${fmt(figure(m, "temperature.cpu"), "C")}`,
  ].join(" ");
}

/** What a Pi or a Jetson adds: the firmware's flags by name, GPU and power rails. */
function boardLines(m: Record<string, unknown>, board: Record<string, unknown>): string[] {
  const lines: string[] = [];
  if (typeof board.model === "string") lines.push(`  board     ${board.model}`);
  if (Object.keys(part(m, "pi")).length > 0) {
    const named = (flags: Record<string, unknown>) => Object.keys(flags).filter((k) => flags[k] === true);
    const now = named(part(m, "pi.now"));
    const since = named(part(m, "pi.sinceBoot"));
    lines.push(
      `  pi        now ${now.length ? now.join(", ") : "ok"}   since boot ${since.length ? since.join(", ") : "ok"}   arm ${fmt(figure(m, "pi.armClockMHz"), " MHz", 0)}`,
    );
  }
  if (Object.keys(part(m, "jetson")).length > 0) {
    // By entry, not by a dotted path: a rail's label is the board's and could hold a dot.
    const rails = Object.entries(part(m, "jetson.rails")).map(
      ([name, rail]) => `${name} ${fmt(num(obj(rail)["watts" satisfies keyof Rail]), " W")}`,
    );
    const mode = valueAt(m, "jetson.powerMode.name" satisfies MetricPath);
    lines.push(
      `  gpu       ${fmt(figure(m, "jetson.gpu.loadPercent"), "%")} at ${fmt(figure(m, "jetson.gpu.clockMHz"), " MHz", 0)}   mode ${typeof mode === "string" ? mode : "-"}`,
    );
    if (rails.length > 0) lines.push(`  power     ${rails.join("   ")}`);
  }
  return lines;
}

/** A full-screen panel for a terminal. */
export function renderPanel(devices: DeviceView[], header: string[]): string {
  const lines = [...header, ""];
  for (const device of devices) {
    const s = obj(device.status);
    const t = obj(device.telemetry);
    const m = obj(t.metrics);
    const cpu = obj(m.cpu);
    const mem = obj(m.memory);
    const disk = obj(m.disk);
    const load = obj(m.load);
    const up = obj(m.uptime);
    const errors = Object.keys(obj(t.errors));
    lines.push(`device ${device.id}  [${String(s.state ?? "unknown")}]  version ${String(s.version ?? "-")}`);
    lines.push(
      `  session   ${String(t.session ?? s.session ?? "-")}  seq ${num(t.seq) ?? "-"}  messages ${device.received}`,
    );
    const cores = Array.isArray(cpu.cores) ? (cpu.cores as unknown[]).map((c) => fmt(num(c), "%", 0)).join(" ") : "-";
    lines.push(`  cpu       ${fmt(num(cpu.load), "%")}   cores ${cores}`);
    const total = num(mem.total);
    const used = num(mem.used);
    lines.push(
      `  memory    ${used === undefined ? "-" : (used / MiB).toFixed(0)} / ${total === undefined ? "-" : (total / MiB).toFixed(0)} MiB`,
    );
    lines.push(`  disk /    ${fmt(num(disk.usePercent), "%")}   load ${fmt(num(load["1m"]), "", 2)}`);
    lines.push(`  temp      ${fmt(num(obj(m.temperature).cpu), " C")}   uptime ${uptimeOf(device, num(up.seconds))}`);
    lines.push(...boardLines(m, obj(s.board)));
    if (errors.length > 0) lines.push(`  collector errors: ${errors.join(", ")}`);
    for (const r of device.results ?? []) lines.push(`  result    ${resultLine(r)}`);
    lines.push("");
  }
  return lines.join("\n");
}

/** The uptime now: the one the last full sample carried, plus the time since (as later messages tell it). */
function uptimeOf(device: DeviceView, seconds: number | undefined): string {
  if (seconds === undefined) return "-";
  const latest = num(obj(device.telemetry).ts);
  const since = latest !== undefined && device.uptimeAt !== undefined ? (latest - device.uptimeAt) / 1000 : 0;
  return `${Math.round(seconds + Math.max(0, since))} s`;
}

/**
 * Files a `P/D/status`, `P/D/telemetry` or `P/D/telemetry/full` (the last full sample, retained) message under
 * its device; returns what it was, or undefined for anything else. Throws on a payload that is not JSON.
 */
export function applyMessage(
  devices: Map<string, DeviceView>,
  prefix: string,
  topic: string,
  payload: Buffer,
): Seen | undefined {
  if (!topic.startsWith(`${prefix}/`)) return undefined;
  const [id, kind, ...rest] = topic.slice(prefix.length + 1).split("/");
  const full = kind === "telemetry" && rest.length === 1 && rest[0] === "full";
  const known =
    ((kind === "status" || kind === "telemetry") && rest.length === 0) ||
    (kind === "results" && rest.length === 1) ||
    full;
  if (!id || !known) return undefined;
  const body = JSON.parse(payload.toString()) as Record<string, unknown>;
  const device = devices.get(id) ?? { id, received: 0 };
  devices.set(id, device);
  device.received += 1;
  if (kind === "results") {
    device.results = [...(device.results ?? []), body].slice(-RESULTS_SHOWN);
    return { device, kind: "result" };
  }
  if (kind === "status") {
    device.status = body;
    return { device, kind: "status" };
  }
  const held = device.telemetry;
  if (full) {
    // The retained last full sample: the base a late viewer starts from, unless it holds a newer full one.
    const ts = num(body.ts) ?? 0;
    if (device.fullTs !== undefined && device.fullTs >= ts) return { device, kind: "full" };
    const base = mergeReport(undefined, body);
    // Partials held from before it are older than it: only newer ones are laid over it.
    const newer = held !== undefined && (num(held.ts) ?? 0) > ts;
    const merged = newer ? mergeReport(base, { full: false, metrics: held.metrics, errors: held.errors }) : base;
    const latest = newer ? held : { ...held, session: body.session, ts: body.ts };
    device.telemetry = { ...latest, metrics: merged.metrics, errors: merged.errors };
    device.fullTs = ts;
    if (obj(body.metrics).uptime !== undefined) device.uptimeAt = ts;
    return { device, kind: "full" };
  }
  // Between full samples a device sends only what moved: merged, the view shows every current value.
  const before = held && { metrics: obj(held.metrics), errors: obj(held.errors) as Record<string, string> };
  const merged = mergeReport(before, body);
  device.telemetry = { ...body, metrics: merged.metrics, errors: merged.errors };
  if (body.full !== false) device.fullTs = num(body.ts);
  if (obj(body.metrics).uptime !== undefined) device.uptimeAt = num(body.ts);
  return { device, kind: "telemetry" };
}

type Seen = { device: DeviceView; kind: "status" | "telemetry" | "full" | "result" };

/** What a terminal shows for one message: the whole panel redrawn, or one line where there is no terminal. */
export function viewUpdate(devices: Map<string, DeviceView>, seen: Seen, tty: boolean, header: string[]): string {
  if (tty) return `\x1b[2J\x1b[H${renderPanel([...devices.values()], header)}\n`;
  if (seen.kind === "status") return `status ${seen.device.id} ${String(seen.device.status?.state)}\n`;
  if (seen.kind === "result") return `result ${seen.device.id} ${resultLine(seen.device.results?.at(-1) ?? {})}\n`;
  return `telemetry ${telemetryLine(seen.device)}\n`;
}
