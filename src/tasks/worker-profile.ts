import type { Worker } from "node:worker_threads";
import { OutpostError } from "../core/errors.ts";
import type { ProfileKind } from "../core/profile.ts";

/**
 * Asks a task worker to profile its own thread with the inspector there (core/profile.ts, run by worker.ts) and
 * waits for its `{profiled: id, ...}`: rejects when the worker ends first, or does not answer within the
 * profile's length and 15 s (a worker busy in native code answers late; one that never does is not waited for).
 */
export function profileWorker(
  worker: Worker,
  o: { n: number; id: number; kind: ProfileKind; ms: number; signal?: AbortSignal },
): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const onAbort = () => finish(new OutpostError("DIAG_PROFILE_FAILED", "cancelled (the agent is stopping)"));
    const finish = (err: OutpostError | undefined, value?: unknown) => {
      clearTimeout(timer);
      o.signal?.removeEventListener("abort", onAbort);
      worker.off("message", onMessage);
      worker.off("exit", onExit);
      if (err) reject(err);
      else resolve(value);
    };
    const onMessage = (m: { profiled?: number; ok?: boolean; value?: unknown; error?: string }) => {
      if (m?.profiled !== o.id) return;
      finish(m.ok ? undefined : new OutpostError("DIAG_PROFILE_FAILED", String(m.error)), m.value);
    };
    const onExit = () => finish(new OutpostError("DIAG_NO_WORKER", `worker ${o.n} ended while it was profiled`));
    const timer = setTimeout(
      () => finish(new OutpostError("DIAG_PROFILE_FAILED", `worker ${o.n} did not answer`)),
      o.ms + 15_000,
    );
    worker.on("message", onMessage);
    worker.once("exit", onExit);
    o.signal?.addEventListener("abort", onAbort, { once: true });
    worker.postMessage({ profile: { id: o.id, kind: o.kind, ms: o.ms } });
  });
}
