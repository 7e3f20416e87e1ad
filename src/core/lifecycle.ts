/** What every long-lived part of the agent implements. */
export interface Component {
  readonly name: string;
  /** Starts the component; resolves once it is ready. Long loops run in the background until `signal` aborts. */
  start(signal: AbortSignal): Promise<void>;
  /** Stops the component and releases its resources; safe to call more than once. */
  stop(): Promise<void>;
}

/** Aborts `controller` when `signal` aborts (at once if it already has): a component's own stop follows the agent's. */
export function followAbort(signal: AbortSignal, controller: AbortController): void {
  if (signal.aborted) controller.abort();
  else signal.addEventListener("abort", () => controller.abort(), { once: true });
}

/**
 * A component that is one background loop: `run(signal)` starts at start and is aborted by stop or by the
 * agent's signal; a failure of the loop goes to `onError` (a loop must never crash the process).
 */
export function loopComponent(
  name: string,
  run: (signal: AbortSignal) => Promise<void>,
  onError: (err: unknown) => void,
): Component {
  const controller = new AbortController();
  return {
    name,
    start: async (signal) => {
      followAbort(signal, controller);
      void run(controller.signal).catch(onError);
    },
    stop: async () => controller.abort(),
  };
}

/** Makes an async stop function idempotent: every caller awaits the same single run. */
export function once(fn: () => Promise<void>): () => Promise<void> {
  let running: Promise<void> | undefined;
  return () => {
    running ??= fn();
    return running;
  };
}

/** Races a promise against a deadline; rejects with `onTimeout()` when the deadline passes first. */
export async function withDeadline<T>(promise: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(onTimeout()), ms);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves when the signal aborts (at once if it has). */
export function abortPromise(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener("abort", () => resolve(), { once: true });
  });
}
