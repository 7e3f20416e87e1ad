/** One thing wrong with a configuration: where, what was expected, what was found, and from which source. */
export interface ConfigProblem {
  path: string;
  expected: string;
  found: string;
  source?: string;
}

/** One line per problem: `mqtt.url: expected ..., found "..." (from OUTPOST_MQTT__URL)`. */
export function formatProblems(problems: readonly ConfigProblem[]): string[] {
  return problems.map((p) => `${p.path}: ${p.expected}, found ${p.found}${p.source ? ` (${p.source})` : ""}`);
}
