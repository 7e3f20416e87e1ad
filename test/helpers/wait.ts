import { EventEmitter } from "node:events";

/** Items arriving over time, and promises that resolve on the first one matching a predicate. */
export class Collected<T> extends EventEmitter<{ item: [T] }> {
  readonly items: T[] = [];

  push(item: T): void {
    this.items.push(item);
    this.emit("item", item);
  }

  /** Resolves with the first item (already seen or future) for which `match` is true. */
  waitFor(match: (item: T) => boolean, timeoutMs: number, what: string): Promise<T> {
    const seen = this.items.find(match);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const onItem = (item: T) => {
        if (!match(item)) return;
        clearTimeout(timer);
        this.off("item", onItem);
        resolve(item);
      };
      const timer = setTimeout(() => {
        this.off("item", onItem);
        reject(new Error(`timed out after ${timeoutMs}ms waiting for ${what}`));
      }, timeoutMs);
      this.on("item", onItem);
    });
  }

  /** Like waitFor, but only items arriving from now on count. */
  waitForNext(match: (item: T) => boolean, timeoutMs: number, what: string): Promise<T> {
    const from = this.items.length;
    return this.waitFor((item) => this.items.indexOf(item) >= from && match(item), timeoutMs, what);
  }
}

/** Polls `done` until it holds, or fails after `timeoutMs` naming what was awaited. */
export async function waitUntil(done: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
