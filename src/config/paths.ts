import { isObject } from "../core/merge.ts";
import type { Config } from "../schema.ts";
import { redact } from "./redact.ts";

/**
 * RFC 7396 JSON merge patch: objects merge key by key, `null` removes a key, anything else replaces.
 * Returns a new value; neither argument is changed.
 */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return patch;
  const out: Record<string, unknown> = isObject(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete out[key];
    else out[key] = mergePatch(out[key], value);
  }
  return out;
}

/**
 * A key path as people write it: segments joined by dots, a segment that holds a dot itself (a deadband key
 * like "jetson.rails.*.watts") quoted, so that a path names one key and can be split back.
 */
export function dottedPath(segments: readonly string[]): string {
  return segments.map((s) => (/^[A-Za-z0-9_*-]+$/.test(s) ? s : JSON.stringify(s))).join(".");
}

/** The key segments of every leaf of a plain object (arrays count as leaves), with its value. */
export function leaves(value: unknown, prefix: string[] = []): { segments: string[]; value: unknown }[] {
  if (!isObject(value)) return prefix.length > 0 ? [{ segments: prefix, value }] : [];
  return Object.entries(value).flatMap(([key, child]) => leaves(child, [...prefix, key]));
}

/** The dotted paths (dottedPath) of every leaf of a plain object (arrays count as leaves). */
export function leafPaths(value: unknown): string[] {
  return leaves(value).map((leaf) => dottedPath(leaf.segments));
}

/**
 * Where the value at a leaf came from: its own origin, or the nearest enclosing key's (an environment
 * variable can set a whole record); undefined for a default.
 */
export function originOf(origins: ReadonlyMap<string, string>, segments: readonly string[]): string | undefined {
  for (let n = segments.length; n > 0; n -= 1) {
    const origin = origins.get(dottedPath(segments.slice(0, n)));
    if (origin !== undefined) return origin;
  }
  return undefined;
}

/** A copy without the objects left empty by a removal. */
export function withoutEmpty(value: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, child] of Object.entries(value)) {
    const kept = isObject(child) ? withoutEmpty(child) : child;
    if (!isObject(kept) || Object.keys(kept).length > 0) out[key] = kept;
  }
  return out;
}

/** A merge patch that removes one dotted path. */
export function pathPatch(path: string): Record<string, unknown> {
  const keys = path.split(".");
  const last = keys.pop() as string;
  return keys.reduceRight<Record<string, unknown>>((inner, key) => ({ [key]: inner }), { [last]: null });
}

/** Each configuration's leaves once: a `config.set` compares the new one against the current and the booted. */
const flats = new WeakMap<Config, Map<string, string>>();

/** The leaves of a configuration (redacted) by dotted path, each as its JSON; arrays are leaves. */
function flat(config: Config): Map<string, string> {
  const known = flats.get(config);
  if (known) return known;
  const out = new Map<string, string>();
  const walk = (node: unknown, path: string) => {
    if (node !== null && typeof node === "object" && !Array.isArray(node)) {
      for (const [k, v] of Object.entries(node)) walk(v, path ? `${path}.${k}` : k);
    } else if (node !== undefined) {
      out.set(path, JSON.stringify(node));
    }
  };
  walk(redact(config), "");
  // Only a frozen configuration (a snapshot's) cannot change under the cached leaves.
  if (Object.isFrozen(config)) flats.set(config, out);
  return out;
}

/** Dotted paths whose values differ (secrets compared redacted, arrays as whole values). */
export function diffPaths(a: Config, b: Config): string[] {
  const fa = flat(a);
  const fb = flat(b);
  const keys = new Set([...fa.keys(), ...fb.keys()]);
  return [...keys].filter((k) => fa.get(k) !== fb.get(k)).sort();
}
