import { SECRET_KEYS } from "./schema.ts";

/** A deep copy with every secret replaced, safe to print or publish. */
export function redact<T>(value: T): T {
  if (Array.isArray(value)) return value.map((v) => redact(v)) as T;
  if (value !== null && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value))
      out[k] = SECRET_KEYS.has(k) && v !== undefined ? "<redacted>" : redact(v);
    return out as T;
  }
  return value;
}
