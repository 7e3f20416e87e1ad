import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

let minorGc: ((options: { type: "minor" }) => void) | undefined;

/**
 * A young-generation collection (about 0.1 ms). Streams that pass many MiB through short-lived buffers (an
 * inflated frame, a large message read past) leave them dead at once, but V8 frees a buffer's memory only at a
 * collection, which external bytes alone trigger late (tens of MiB): callers collect every few MiB instead.
 */
export function reclaim(): void {
  if (!minorGc) {
    setFlagsFromString("--expose-gc");
    minorGc = runInNewContext("gc") as typeof minorGc;
  }
  minorGc?.({ type: "minor" });
}

/** Counts bytes and collects every `every` bytes. */
export function reclaimEvery(every: number): (bytes: number) => void {
  let since = 0;
  return (bytes) => {
    since += bytes;
    if (since < every) return;
    since = 0;
    reclaim();
  };
}
