import { errorMessage, isOutpostError, OutpostError } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";
import type { ClassifyDefinition } from "./config.ts";
import type { InferOutput } from "./worker.ts";

const round6 = (v: number) => Math.round(v * 1e6) / 1e6;

/** A classifier's verdict from its output scores: the top label, and pass when it is a passing label scored high enough. */
export function classification(
  def: ClassifyDefinition,
  out: InferOutput,
): { verdict: "pass" | "fail"; label: string; score: number; scores: Record<string, number> } {
  const output = def.output ?? out.model.outputs[0]?.name ?? "";
  const t = out.outputs[output];
  if (!t) throw new OutpostError("TASK_MODEL_INVALID", `the model has no output ${output}`);
  const values = Array.from(t.data as Float32Array);
  if (values.length !== def.labels.length) {
    throw new OutpostError(
      "TASK_MODEL_INVALID",
      `output ${output} has ${values.length} scores for ${def.labels.length} labels`,
    );
  }
  let top = 0;
  for (let i = 1; i < values.length; i++) if ((values[i] ?? 0) > (values[top] ?? 0)) top = i;
  const label = def.labels[top] ?? "";
  const score = values[top] ?? 0;
  const pass = def.pass.labels.includes(label) && score >= def.pass.minScore;
  return {
    verdict: pass ? "pass" : "fail",
    label,
    score: round6(score),
    scores: Object.fromEntries(def.labels.map((l, i) => [l, round6(values[i] ?? 0)])),
  };
}

/**
 * Runs every check on the same image at once. The first to fail (a fail verdict or an error) aborts the
 * others through their AbortSignal, and the verdict names it; pass needs every check to pass.
 */
export async function runChecks(
  names: readonly string[],
  run: (check: string, signal: AbortSignal) => Promise<Record<string, unknown>>,
  signal: AbortSignal | undefined,
  log: Logger,
): Promise<Record<string, unknown>> {
  const group = new AbortController();
  const onAbort = () => group.abort();
  signal?.addEventListener("abort", onAbort, { once: true });
  const outcomes: Record<string, unknown> = {};
  let failed: { check: string; reason: string } | undefined;
  try {
    await Promise.all(
      names.map(async (check) => {
        try {
          const r = await run(check, group.signal);
          outcomes[check] = { verdict: r.verdict, label: r.label, score: r.score, runMs: r.runMs };
          if (r.verdict === "fail" && !failed) {
            failed = { check, reason: `${String(r.label)} (${String(r.score)})` };
            group.abort();
          }
        } catch (err) {
          const code = isOutpostError(err) ? err.code : "TASK_FAILED";
          if (code === "TASK_ABORTED" && failed) {
            outcomes[check] = { cancelled: true };
            return;
          }
          outcomes[check] = { error: { code, message: errorMessage(err) } };
          if (!failed) {
            failed = { check, reason: code };
            group.abort();
          }
        }
      }),
    );
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
  if (failed) log.info({ failedCheck: failed.check }, "a check failed; the others were cancelled");
  return {
    verdict: failed ? "fail" : "pass",
    ...(failed ? { failedCheck: failed.check, reason: failed.reason } : {}),
    checks: outcomes,
  };
}
