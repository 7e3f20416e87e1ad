/** The one error class of the agent. `code` is stable and machine-readable; `message` is for humans. */
export class OutpostError extends Error {
  readonly code: string;
  readonly details: unknown;

  constructor(code: string, message: string, options: { cause?: unknown; details?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "OutpostError";
    this.code = code;
    this.details = options.details;
  }
}

export function isOutpostError(err: unknown, code?: string): err is OutpostError {
  return err instanceof OutpostError && (code === undefined || err.code === code);
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
