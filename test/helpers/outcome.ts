import { isOutpostError } from "../../src/core/errors.ts";

/** "ok", the OutpostError's code, or what else was thrown: what a test of a refusal compares. */
export function outcome(fn: () => unknown): string {
  try {
    fn();
    return "ok";
  } catch (err) {
    return describe(err);
  }
}

/** The same for a promise. */
export async function settled(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "ok";
  } catch (err) {
    return describe(err);
  }
}

function describe(err: unknown): string {
  return isOutpostError(err) ? err.code : `not an OutpostError: ${String(err)}`;
}
