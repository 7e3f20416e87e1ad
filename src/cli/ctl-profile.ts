import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { z } from "zod";
import { PROFILE_MS } from "../core/profile.ts";
import { withClient } from "./ctl-client.ts";
import { failed, sealedAnswer, sealedSession } from "./ctl-sealed.ts";
import { BROKER_FLAGS, durationFlag } from "./ctl-settings.ts";
import { EXIT, type Host, UsageError } from "./host.ts";
import { cpuToPprof, heapToPprof } from "./pprof.ts";

/** A snapshot is about one and a half times the heap; an agent's heap is tens of MiB. */
const MAX_SNAPSHOT = 512 * 1024 * 1024;
const snapshotAnswer = sealedAnswer.extend({ heapBytes: z.number().int().min(0) });

const profileAnswer = sealedAnswer.extend({
  kind: z.enum(["cpu", "heap"]),
  thread: z.string().max(32),
  ms: z.number().int(),
  tookMs: z.number().int(),
});

export async function profileCommand(host: Host, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      ...BROKER_FLAGS,
      key: { type: "string" },
      cpu: { type: "string" },
      heap: { type: "string" },
      "heap-snapshot": { type: "boolean" },
      worker: { type: "string" },
      out: { type: "string" },
      pprof: { type: "boolean" },
      timeout: { type: "string" },
      "accept-new": { type: "boolean" },
    },
    allowPositionals: true,
  });
  const [device, ...extra] = positionals;
  if (device === undefined || extra.length > 0) throw new UsageError("ctl profile: expected DEVICE");
  const asked = [values.cpu !== undefined, values.heap !== undefined, values["heap-snapshot"] === true];
  if (asked.filter(Boolean).length !== 1) {
    throw new UsageError("ctl profile: one of --cpu DURATION, --heap DURATION or --heap-snapshot");
  }
  const snapshot = values["heap-snapshot"] === true;
  if (snapshot && values.worker !== undefined) throw new UsageError("--heap-snapshot: of the agent's own heap only");
  if (snapshot && values.pprof) throw new UsageError("--heap-snapshot: DevTools' format only, no --pprof");
  const kind = values.cpu !== undefined ? "cpu" : "heap";
  const ms = snapshot ? PROFILE_MS.min : durationFlag(kind, values.cpu ?? values.heap, 0);
  if (ms < PROFILE_MS.min || ms > PROFILE_MS.max) {
    throw new UsageError(`--${kind}: between ${PROFILE_MS.min} ms and ${PROFILE_MS.max / 1000} s`);
  }
  const worker = values.worker === undefined ? undefined : Number(values.worker);
  if (worker !== undefined && !(Number.isInteger(worker) && worker >= 1)) {
    throw new UsageError("--worker N: a task worker's number, from 1 (task.list lists them in that order)");
  }
  const timeoutMs = durationFlag("timeout", values.timeout, snapshot ? 120_000 : ms + 30_000);
  const session = sealedSession(host, values, { verb: "profile", device, timeoutMs });
  const got = await withClient(session.broker, async (client) => {
    const reader = await session.reader(client);
    if (snapshot) return reader.read("debug.heap-snapshot", {}, snapshotAnswer, MAX_SNAPSHOT);
    return reader.read("debug.profile", { kind, ms, ...(worker === undefined ? {} : { worker }) }, profileAnswer);
  });
  if (!got.ok) return failed(host, device, got);
  if (snapshot) {
    const file = values.out ?? `${device}-${new Date().toISOString().replace(/[:.]/g, "-")}.heapsnapshot`;
    // A heap holds what the agent holds: for the operator's eyes only.
    writeFileSync(file, got.plain, { mode: 0o600 });
    const wire = got.answer.chunks.reduce((n, c) => n + c.size, 0);
    host.stdout.write(`${file}: heap snapshot of ${device} (${got.plain.length} bytes; ${wire} bytes on the wire)\n`);
    return EXIT.OK;
  }
  const json = JSON.parse(got.plain.toString("utf8")) as unknown;
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  const ext = values.pprof ? "pb.gz" : kind === "cpu" ? "cpuprofile" : "heapprofile";
  const file = values.out ?? `${device}-${kind}-${stamp}.${ext}`;
  const bytes = values.pprof ? (kind === "cpu" ? cpuToPprof(json) : heapToPprof(json)) : got.plain;
  writeFileSync(file, bytes, { mode: 0o600 });
  const a = got.answer;
  host.stdout.write(
    `${file}: ${kind} profile of ${device}'s ${a.thread}, ${a.ms} ms (${bytes.length} bytes; ${a.chunks.length} sealed chunks, ${a.chunks.reduce((n, c) => n + c.size, 0)} bytes on the wire)\n`,
  );
  return EXIT.OK;
}
