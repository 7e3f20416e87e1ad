import type { Code } from "./codes.ts";

/** The agent's error class. `code` is stable, machine-readable and declared in codes.ts; `message` is for humans. */
export class OutpostError extends Error {
  readonly code: Code;
  readonly details: unknown;

  constructor(code: Code, message: string, options: { cause?: unknown; details?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "OutpostError";
    this.code = code;
    this.details = options.details;
  }
}

export function isOutpostError(err: unknown, code?: Code): err is OutpostError {
  return err instanceof OutpostError && (code === undefined || err.code === code);
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
