import { Session } from "node:inspector/promises";
import { getHeapSnapshot } from "node:v8";

/** What can be profiled in-process: the single executable's runtime has no `--inspect`, but has the inspector. */
export type ProfileKind = "cpu" | "heap";

/** The bounds of one profile: long enough to see a pattern, short enough to cost little (docs/diagnostics.md). */
export const PROFILE_MS = { min: 100, max: 60_000 };
/** Sampling every 1 ms (CPU) and every 32 KiB allocated (heap): Node's own defaults for their profilers. */
const CPU_INTERVAL_US = 1000;
const HEAP_INTERVAL_BYTES = 32 * 1024;

/**
 * Profiles this thread (the main thread, or the worker it runs in) for `ms` through the in-process inspector:
 * a V8 CPU profile (`.cpuprofile`, as Chrome DevTools and speedscope read it) or a sampling heap profile
 * (`.heapprofile`). Aborting `signal` ends it early, with what was sampled so far.
 */
export async function profileThread(kind: ProfileKind, ms: number, signal?: AbortSignal): Promise<unknown> {
  const session = new Session();
  session.connect();
  try {
    const wait = () =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(done, ms);
        function done() {
          clearTimeout(timer);
          signal?.removeEventListener("abort", done);
          resolve();
        }
        signal?.addEventListener("abort", done, { once: true });
      });
    if (kind === "cpu") {
      await session.post("Profiler.enable");
      await session.post("Profiler.setSamplingInterval", { interval: CPU_INTERVAL_US });
      await session.post("Profiler.start");
      await wait();
      const { profile } = await session.post("Profiler.stop");
      await session.post("Profiler.disable");
      return profile;
    }
    await session.post("HeapProfiler.enable");
    await session.post("HeapProfiler.startSampling", { samplingInterval: HEAP_INTERVAL_BYTES });
    await wait();
    const { profile } = await session.post("HeapProfiler.stopSampling");
    await session.post("HeapProfiler.disable");
    return profile;
  } finally {
    session.disconnect();
  }
}

/**
 * A full heap snapshot of this thread (`.heapsnapshot`), its `strings` passed through `scrub` (every string the
 * heap holds is in that last section: a secret in the configuration is one of them). The text is held whole:
 * the caller checks first that memory allows about twice the heap.
 */
export async function heapSnapshot(scrub: (s: string) => string): Promise<string> {
  const parts: string[] = [];
  for await (const chunk of getHeapSnapshot()) parts.push(String(chunk));
  const text = parts.join("");
  const at = text.lastIndexOf('"strings":[');
  if (at < 0 || !text.endsWith("]}")) throw new Error("the heap snapshot has no strings section at its end");
  const strings = JSON.parse(text.slice(at + '"strings":'.length, -1)) as string[];
  return `${text.slice(0, at)}"strings":${JSON.stringify(strings.map(scrub))}}`;
}
