import { redactUrlPasswords } from "../core/log-scrub.ts";
import { SECRET_PATHS } from "./schema.ts";

/**
 * A deep copy of a configuration with every secret (SECRET_PATHS) replaced, safe to print or publish. By path,
 * not by key name: a deadband or a task that happens to be called "password" is configuration, not a secret.
 */
export function redact<T>(value: T): T {
  return redactAt(value, "") as T;
}

/** SECRET_PATHS as dotted strings: a `config.set` redacts the configuration several times, so the test is a lookup. */
const SECRET_DOTTED = new Set(SECRET_PATHS.map((p) => p.join(".")));

/** `at`: the dotted path of `value` ("" at the root; "[]" for an array's items). */
function redactAt(value: unknown, at: string): unknown {
  // A broker URL's password (mqtt.url, mqtt.failover): the configuration's hash is published, and would let it
  // be guessed offline.
  if (typeof value === "string") {
    return at === "mqtt.url" || at.startsWith("mqtt.failover") ? redactUrlPasswords(value) : value;
  }
  if (Array.isArray(value)) return value.map((v) => redactAt(v, `${at}.[]`));
  if (value !== null && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const k in value) {
      if (!Object.hasOwn(value, k)) continue;
      const v = (value as Record<string, unknown>)[k];
      const path = at === "" ? k : `${at}.${k}`;
      out[k] = v !== undefined && SECRET_DOTTED.has(path) ? "<redacted>" : redactAt(v, path);
    }
    return out;
  }
  return value;
}

const secretsOf = new WeakMap<object, readonly string[]>();

/**
 * The secret values a configuration holds, for the logger to keep out of every line: the values at
 * SECRET_PATHS (the password from `mqtt.passwordFile` included, once loaded) and the password of every broker
 * URL. The same array for the same configuration, so the logger prepares them once per change.
 */
export function secretValues(config: object): readonly string[] {
  const known = secretsOf.get(config);
  if (known) return known;
  const found: string[] = [];
  for (const path of SECRET_PATHS) {
    let at: unknown = config;
    for (const key of path)
      at = at !== null && typeof at === "object" ? (at as Record<string, unknown>)[key] : undefined;
    if (typeof at === "string") found.push(at);
  }
  const mqtt = (config as { mqtt?: { url?: unknown; failover?: unknown } }).mqtt;
  const urls = [mqtt?.url, ...(Array.isArray(mqtt?.failover) ? mqtt.failover : [])];
  for (const url of urls) {
    if (typeof url !== "string") continue;
    const password = urlPassword(url);
    if (password === undefined) continue;
    found.push(password);
    try {
      found.push(decodeURIComponent(password));
    } catch {
      // A `%` not followed by two hex digits: the password as written is all there is.
    }
  }
  const unique = [...new Set(found)];
  secretsOf.set(config, unique);
  return unique;
}

/**
 * A broker URL's password as written. By hand, not through `new URL`: the schema takes a password with an
 * unencoded `/` (base64 passwords have them), which `new URL` refuses, and such a URL must not escape the logger.
 */
function urlPassword(url: string): string | undefined {
  const m = /^[a-z][a-z0-9+.-]*:\/\/(.*)@[^@]*$/i.exec(url);
  const credentials = m?.[1];
  if (credentials === undefined) return undefined;
  const colon = credentials.indexOf(":");
  return colon < 0 || colon === credentials.length - 1 ? undefined : credentials.slice(colon + 1);
}

/**
 * The secrets the logger keeps out of every line: the configuration's now (read for every line: a reload or
 * config.set may change them) and those it started with, which the link goes on using until a restart.
 */
export function liveSecrets(store: { booted: { config: object }; current(): { config: object } }) {
  const booted = secretValues(store.booted.config);
  let from: object | undefined;
  let both: readonly string[] = booted;
  return (): readonly string[] => {
    const { config } = store.current();
    if (config !== from) {
      from = config;
      both = [...new Set([...booted, ...secretValues(config)])];
    }
    return both;
  };
}
