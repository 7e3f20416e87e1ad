import { SECRET_PATHS } from "./schema.ts";

/**
 * A deep copy of a configuration with every secret (SECRET_PATHS) replaced, safe to print or publish. By path,
 * not by key name: a deadband or a task that happens to be called "password" is configuration, not a secret.
 */
export function redact<T>(value: T, path: readonly string[] = []): T {
  if (Array.isArray(value)) return value.map((v) => redact(v, [...path, "[]"])) as T;
  if (value !== null && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      const at = [...path, k];
      const secret = SECRET_PATHS.some((p) => p.length === at.length && p.every((s, i) => s === at[i]));
      out[k] = secret && v !== undefined ? "<redacted>" : redact(v, at);
    }
    return out as T;
  }
  return value;
}
