// V8's profiles as pprof's protobuf (`ctl profile --pprof`), converted on the operator's side: the device sends
// only what V8 makes. Encoded with Datadog's pprof-format (the schema is pprof's profile.proto).
import { gzipSync } from "node:zlib";
import { Line, Location, Function as PFunction, Profile, Sample, StringTable, ValueType } from "pprof-format";
import { z } from "zod";
import { OutpostError } from "../core/errors.ts";

const callFrame = z.object({
  functionName: z.string(),
  url: z.string(),
  lineNumber: z.number().int(),
  columnNumber: z.number().int().optional(),
});
/** A V8 CPU profile (`Profiler.stop`). */
const cpuProfile = z.object({
  nodes: z.array(
    z.object({
      id: z.number().int(),
      callFrame,
      hitCount: z.number().int().min(0).optional(),
      children: z.array(z.number().int()).optional(),
    }),
  ),
  startTime: z.number(),
  endTime: z.number(),
  samples: z.array(z.number().int()).optional(),
});
/**
 * A V8 sampling heap profile (`HeapProfiler.stopSampling`): a tree, each node with the bytes it holds. Each node
 * is checked as the walk reaches it: a recursive schema would recurse as deep as a hostile tree goes.
 */
const heapNode = z.object({ callFrame, selfSize: z.number().min(0), children: z.array(z.unknown()) });

/** Interns functions and locations (one location per call-tree node, as V8's nodes are per call site). */
class Builder {
  readonly strings = new StringTable();
  readonly functions: PFunction[] = [];
  readonly locations: Location[] = [];
  private readonly functionIds = new Map<string, number>();

  location(frame: z.infer<typeof callFrame>): number {
    const key = `${frame.functionName}\n${frame.url}\n${frame.lineNumber}:${frame.columnNumber ?? 0}`;
    let functionId = this.functionIds.get(key);
    if (functionId === undefined) {
      functionId = this.functions.length + 1;
      this.functionIds.set(key, functionId);
      const name = this.strings.dedup(frame.functionName || "(anonymous)");
      this.functions.push(
        new PFunction({ id: functionId, name, systemName: name, filename: this.strings.dedup(frame.url) }),
      );
    }
    const id = this.locations.length + 1;
    // V8's lines count from 0; pprof's from 1.
    this.locations.push(new Location({ id, line: [new Line({ functionId, line: frame.lineNumber + 1 })] }));
    return id;
  }

  type(type: string, unit: string): ValueType {
    return new ValueType({ type: this.strings.dedup(type), unit: this.strings.dedup(unit) });
  }
}

/** A `.cpuprofile` as pprof: samples and CPU time per stack. */
export function cpuToPprof(json: unknown): Uint8Array {
  const parsed = cpuProfile.safeParse(json);
  if (!parsed.success) throw new OutpostError("DIAG_INVALID", "not a V8 CPU profile");
  const p = parsed.data;
  const b = new Builder();
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const locationOf = new Map(p.nodes.map((n) => [n.id, b.location(n.callFrame)]));
  const samples = p.samples ?? [];
  const durationUs = Math.max(0, p.endTime - p.startTime);
  const periodNs = samples.length > 0 ? Math.round((durationUs * 1000) / samples.length) : 0;
  const sample: Sample[] = [];
  for (const n of p.nodes) {
    const hits = n.hitCount ?? 0;
    // V8 samples on a clock: "(idle)" is time the thread waited, not CPU it used.
    if (hits === 0 || n.callFrame.functionName === "(idle)") continue;
    const stack: number[] = [];
    // Leaf first, as pprof wants; a cycle in a broken profile cannot loop forever.
    for (let id: number | undefined = n.id; id !== undefined && stack.length < p.nodes.length; id = parent.get(id)) {
      const loc = locationOf.get(id);
      if (loc !== undefined) stack.push(loc);
    }
    sample.push(new Sample({ locationId: stack, value: [hits, hits * periodNs] }));
  }
  const profile = new Profile({
    sampleType: [b.type("samples", "count"), b.type("cpu", "nanoseconds")],
    sample,
    location: b.locations,
    function: b.functions,
    stringTable: b.strings,
    timeNanos: BigInt(Math.round(Date.now() * 1e6)),
    durationNanos: Math.round(durationUs * 1000),
    periodType: b.type("cpu", "nanoseconds"),
    period: periodNs,
  });
  return gzipSync(profile.encode());
}

/** A `.heapprofile` as pprof: the bytes each stack holds (live at the end of sampling). */
export function heapToPprof(json: unknown): Uint8Array {
  const head = (json as { head?: unknown } | null)?.head;
  if (!heapNode.safeParse(head).success) throw new OutpostError("DIAG_INVALID", "not a V8 sampling heap profile");
  const b = new Builder();
  const sample: Sample[] = [];
  // One path, pushed and popped; copied (leaf first) only for a node that holds bytes. A deeper or larger tree
  // than V8 makes is cut, not followed.
  const path: number[] = [];
  let nodes = 0;
  const walk = (raw: unknown) => {
    const parsed = heapNode.safeParse(raw);
    if (!parsed.success || path.length >= 1024 || ++nodes > 1_000_000) return;
    const node = parsed.data;
    path.push(b.location(node.callFrame));
    if (node.selfSize > 0) sample.push(new Sample({ locationId: path.toReversed(), value: [node.selfSize] }));
    for (const c of node.children) walk(c);
    path.pop();
  };
  walk(head);
  const profile = new Profile({
    sampleType: [b.type("space", "bytes")],
    sample,
    location: b.locations,
    function: b.functions,
    stringTable: b.strings,
    timeNanos: BigInt(Math.round(Date.now() * 1e6)),
    periodType: b.type("space", "bytes"),
  });
  return gzipSync(profile.encode());
}
