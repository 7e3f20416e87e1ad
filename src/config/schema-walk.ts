import { parseDocument } from "yaml";
import type { z } from "zod";
import { isObject } from "../core/merge.ts";
import { durationMs } from "./duration.ts";
import { sizeBytes } from "./size.ts";

export type SchemaNode = z.core.$ZodType;

/** The schema nodes of durations and sizes (see schema.ts `duration` and `size`): the typed view converts them. */
const DURATIONS = new WeakSet<SchemaNode>();
const SIZES = new WeakSet<SchemaNode>();

export function markDuration<T extends SchemaNode>(node: T): T {
  DURATIONS.add(node);
  return node;
}

export function markSize<T extends SchemaNode>(node: T): T {
  SIZES.add(node);
  return node;
}

/** A duration as the file writes it ("10s"); the typed view holds its milliseconds. */
export type DurationText = string & z.$brand<"duration">;
/** A size as the file writes it ("64MiB"); the typed view holds its bytes. */
export type SizeText = string & z.$brand<"size">;

/**
 * The configuration as modules read it: every duration in milliseconds and every size in bytes, parsed once
 * per snapshot. The file's form (the text as written) stays what `config print`, diffs and the hash use.
 */
export type Typed<T> = T extends DurationText | SizeText
  ? number
  : T extends readonly (infer E)[]
    ? readonly Typed<E>[]
    : T extends object
      ? { readonly [K in keyof T]: Typed<T[K]> }
      : T;

/** Walks the schema through wrappers (default, optional, ...) to the node that holds a value. */
export function unwrap(node: SchemaNode): SchemaNode {
  let current = node;
  for (;;) {
    if (DURATIONS.has(current) || SIZES.has(current)) return current;
    const def = current._zod.def as { type: string; innerType?: SchemaNode; in?: SchemaNode };
    if (def.innerType && ["default", "prefault", "optional", "nullable", "readonly", "catch"].includes(def.type)) {
      current = def.innerType;
    } else if (def.type === "pipe" && def.in) {
      current = def.in;
    } else {
      return current;
    }
  }
}

export function childOf(node: SchemaNode, key: string): SchemaNode | undefined {
  const def = unwrap(node)._zod.def as { type: string; shape?: Record<string, SchemaNode> };
  if (def.type !== "object" || !def.shape) return undefined;
  return Object.hasOwn(def.shape, key) ? def.shape[key] : undefined;
}

export function knownKeys(node: SchemaNode): string[] {
  const def = unwrap(node)._zod.def as { shape?: Record<string, SchemaNode> };
  return Object.keys(def.shape ?? {});
}

/** Converts an environment string to what the schema node expects, leaving validation to the schema. */
export function coerce(node: SchemaNode, text: string): unknown {
  const def = unwrap(node)._zod.def as { type: string; values?: unknown[]; options?: SchemaNode[] };
  const kinds = def.type === "union" ? (def.options ?? []).map((o) => unwrap(o)._zod.def.type) : [def.type];
  const literalNumbers = def.type === "union" && kinds.every((k) => k === "literal");
  if (kinds.includes("number") || literalNumbers) {
    const n = Number(text);
    return text.trim() !== "" && Number.isFinite(n) ? n : text;
  }
  if (kinds.includes("boolean")) {
    if (text === "true") return true;
    if (text === "false") return false;
    return text;
  }
  if (kinds.includes("array") || kinds.includes("object") || kinds.includes("record")) {
    const doc = parseDocument(text);
    return doc.errors.length === 0 ? doc.toJS() : text;
  }
  return text;
}

/**
 * The typed view of a value the schema has validated (see Typed): the same shape, durations and sizes as
 * numbers. Frozen, like the snapshot it comes from.
 */
export function typedView<T>(schema: SchemaNode, value: T): Typed<T> {
  return convert(schema, value) as Typed<T>;
}

function convert(schema: SchemaNode, value: unknown): unknown {
  const node = unwrap(schema);
  if (DURATIONS.has(node)) return typeof value === "string" ? durationMs(value) : value;
  if (SIZES.has(node)) return typeof value === "string" ? sizeBytes(value) : value;
  const def = node._zod.def as {
    type: string;
    shape?: Record<string, SchemaNode>;
    catchall?: SchemaNode;
    element?: SchemaNode;
    valueType?: SchemaNode;
    options?: SchemaNode[];
  };
  if (def.type === "array" && def.element && Array.isArray(value)) {
    const element = def.element;
    return Object.freeze(value.map((v) => convert(element, v)));
  }
  if (!isObject(value)) return value;
  if (def.type === "object" && def.shape) {
    const { shape, catchall } = def;
    return mapValues(value, (key) => (Object.hasOwn(shape, key) ? shape[key] : catchall));
  }
  if (def.type === "record" && def.valueType) {
    const valueType = def.valueType;
    return mapValues(value, () => valueType);
  }
  if (def.type === "union" && def.options) {
    // The option that accepts the value (the file's form validates again); a discriminated union's is one.
    const option = def.options.find((o) => (o as z.ZodType).safeParse(value).success);
    return option ? convert(option, value) : value;
  }
  return value;
}

function mapValues(
  value: Record<string, unknown>,
  schemaOf: (key: string) => SchemaNode | undefined,
): Readonly<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  for (const [key, child] of Object.entries(value)) {
    const node = schemaOf(key);
    out[key] = node ? convert(node, child) : child;
  }
  return Object.freeze(out);
}
