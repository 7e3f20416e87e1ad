const UNITS: Record<string, number> = {
  B: 1,
  KiB: 1024,
  MiB: 1024 ** 2,
  GiB: 1024 ** 3,
  KB: 1000,
  MB: 1000 ** 2,
  GB: 1000 ** 3,
};
/** What a size looks like; also the `pattern` of every size in the JSON Schema. */
export const SIZE_PATTERN = /^(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB)$/;
const PATTERN = SIZE_PATTERN;

/** Parses "512KiB", "64MiB", "1GB" into bytes; returns undefined for anything else. */
export function parseSize(text: string): number | undefined {
  const match = PATTERN.exec(text.trim());
  if (!match) return undefined;
  const factor = UNITS[match[2] ?? ""];
  if (factor === undefined) return undefined;
  return Math.floor(Number(match[1]) * factor);
}

export function sizeBytes(text: string): number {
  const bytes = parseSize(text);
  if (bytes === undefined) throw new RangeError(`not a size: ${JSON.stringify(text)}`);
  return bytes;
}
