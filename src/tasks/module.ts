import { readFile } from "node:fs/promises";
import { basename } from "node:path";
import { z } from "zod";
import { type CommandDefinition, defineCommand } from "../commands/commands.ts";
import { sleep } from "../core/clock.ts";
import { errorMessage, OutpostError } from "../core/errors.ts";
import { type Component, loopComponent } from "../core/lifecycle.ts";
import { valueAt } from "../core/merge.ts";
import type { Module } from "../kernel/module.ts";
import { tasksSection } from "./config.ts";
import { Inbox } from "./inbox.ts";
import { registerTaskMetrics } from "./metrics.ts";
import { type TaskInput, type TaskResult, TaskRunner } from "./runner.ts";
import { wireFeeds } from "./tensor-wire.ts";
import { ThresholdRule } from "./threshold.ts";

/** The largest `task.run` request: an image or tensors, base64 (the broker's and the link's packet caps apply too). */
const MAX_TASK_REQUEST = 8 * 1024 * 1024;
/** How often threshold rules look at the latest sample when no telemetry module says its pace. */
const THRESHOLD_PACE_MS = 10_000;

const EITHER_INPUT = "expected either image (the bytes, base64) or feeds (named tensors)";

export const runParams = z.strictObject({
  task: z.string().min(1),
  input: z
    .strictObject(
      {
        feeds: wireFeeds.optional(),
        image: z.base64("expected the image's bytes as base64").optional(),
      },
      // Only the missing or mistyped input gets this message: an unknown key inside it is named as such.
      { error: (issue) => (issue.code === "invalid_type" ? EITHER_INPUT : undefined) },
    )
    .superRefine((i, ctx) => {
      if ((i.feeds === undefined) === (i.image === undefined)) {
        ctx.addIssue({ code: "custom", message: `${EITHER_INPUT}, found ${i.feeds ? "both" : "neither"}` });
      }
    }),
});

/**
 * Inference and quality checks in worker threads (docs/tasks.md): `task.run`, watched folders and threshold
 * rules over telemetry; every outcome goes out on `P/D/results/<task>` through the outbox.
 */
export const tasksModule: Module<typeof tasksSection> = {
  name: "tasks",
  config: tasksSection,
  create(ctx) {
    const config = ctx.config();
    let observe = (_: TaskResult) => {};
    const runner = new TaskRunner({
      config,
      stateDir: ctx.stateDir,
      logger: ctx.logger,
      send: (m) => ctx.send(m),
      resultTopic: (task) => ctx.topics.result(task),
      onResult: (r) => observe(r),
      now: () => ctx.clock.mono(),
    });
    observe = registerTaskMetrics(ctx.metrics, { counts: () => runner.resultCounts(), pool: () => runner.poolStats() });

    // Watched folders and schedules: what brings work in, stopped first when the agent stops.
    const intake: Component[] = [];
    const inboxes: Inbox[] = [];
    for (const [name, def] of Object.entries(config.define)) {
      if ((def.type !== "classify-image" && def.type !== "checks") || !def.watch) continue;
      const inbox = new Inbox({
        task: name,
        dir: def.watch.dir,
        settleMs: def.watch.settle,
        pollMs: def.watch.poll,
        parallel: runner.size(),
        quarantineAfter: def.watch.quarantineAfter,
        evaluate: (file, image) => runner.evaluate(name, { image, file }, { source: "watch" }),
        publish: (result) => runner.publish(result),
        commit: () => ctx.commit(),
        logger: ctx.logger.child({ task: name }),
        now: () => ctx.clock.mono(),
      });
      inboxes.push(inbox);
      intake.push(
        loopComponent(
          `tasks.watch.${name}`,
          (signal) => inbox.run(signal),
          (err) => ctx.logger.error({ err: errorMessage(err), task: name }, "watched folder stopped"),
        ),
      );
    }

    for (const [name, def] of Object.entries(config.define)) {
      if (def.type === "threshold" || !def.schedule) continue;
      const { every, file } = def.schedule;
      const log = ctx.logger.child({ task: name });
      intake.push(
        loopComponent(
          `tasks.schedule.${name}`,
          async (signal) => {
            while (!signal.aborted) {
              await sleep(every, signal);
              if (signal.aborted) return;
              let input: TaskInput;
              try {
                const bytes = await readFile(file);
                input = def.type === "onnx" ? scheduledFeeds(bytes) : { image: bytes, file: basename(file) };
              } catch (err) {
                log.warn({ file, err: errorMessage(err) }, "scheduled run skipped: its input file cannot be read");
                continue;
              }
              await runner.run(name, input, { source: "schedule" }).catch((err: unknown) => {
                log.warn({ err: errorMessage(err) }, "scheduled run refused");
              });
            }
          },
          (err) => log.error({ err: errorMessage(err) }, "schedule stopped"),
        ),
      );
    }

    const rules = Object.entries(config.define).flatMap(([name, def]) =>
      def.type === "threshold"
        ? [
            {
              name,
              rule: new ThresholdRule({
                metric: def.metric,
                above: def.above,
                below: def.below,
                forMs: def.for,
                hysteresis: def.hysteresis,
              }),
            },
          ]
        : [],
    );
    const components: Component[] = [...intake];
    if (rules.length > 0) {
      // Evaluated at the telemetry's pace on the latest sample (not only on reported changes: a value inside
      // its deadband must still count towards "for 30 s").
      components.push(
        loopComponent(
          "tasks.thresholds",
          async (signal) => {
            while (!signal.aborted) {
              const metrics = ctx.latest.sampled()?.metrics;
              if (metrics) {
                for (const { name, rule } of rules) {
                  const change = rule.observe(valueAt(metrics, rule.metric), ctx.clock.mono());
                  if (change) ctx.alarm(name, change);
                }
              }
              // At the telemetry's pace: a new sample is what can change a verdict.
              await sleep(ctx.telemetry()?.intervalMs() ?? THRESHOLD_PACE_MS, signal);
            }
          },
          (err) => ctx.logger.error({ err: errorMessage(err) }, "threshold rules stopped"),
        ),
      );
    }

    const goldens = runner.models.goldenTasks();
    if (goldens.length > 0) {
      // Every start proves the tasks still give the known answers (an update on trial commits only then);
      // a failure is tried again, since a worker may have been busy or the runtime still extracting.
      components.push(
        loopComponent(
          "tasks.golden",
          async (signal) => {
            let pending = goldens;
            while (!signal.aborted && pending.length > 0) {
              const failed: string[] = [];
              for (const task of pending) {
                const verdict = await runner.models.golden(task);
                if (!verdict.ok) {
                  failed.push(task);
                  ctx.logger.error({ task, reason: verdict.reason }, "golden sample failed");
                }
              }
              pending = failed;
              if (pending.length > 0) await sleep(GOLDEN_RETRY_MS, signal, { unref: true });
            }
          },
          (err) => ctx.logger.error({ err: errorMessage(err) }, "golden samples stopped"),
        ),
      );
    }

    const commands: CommandDefinition[] = [
      defineCommand({
        name: "task.run",
        params: runParams,
        maxRequestBytes: MAX_TASK_REQUEST,
        run: async (p, context) => {
          const input = p.input.feeds
            ? { feeds: p.input.feeds }
            : { image: Buffer.from(p.input.image ?? "", "base64") };
          const result = await runner.run(p.task, input, {
            trace: context.id,
            signal: context.signal,
            source: "command",
          });
          if (!result.ok && result.error) {
            throw new OutpostError(result.error.code, result.error.message, { details: result });
          }
          return result;
        },
      }),
      defineCommand({
        name: "task.list",
        params: z.strictObject({}).nullish(),
        changesState: false,
        run: () => runner.list(),
      }),
    ];

    return {
      components,
      commands,
      describe: () => runner.list(),
      health: () => {
        const h = runner.health();
        if (!h.ok) return h;
        return inboxes.map((i) => i.health()).find((i) => !i.ok) ?? h;
      },
      workers: { profile: (n, kind, ms, signal) => runner.profileWorker(n, kind, ms, signal) },
      models: {
        current: (task) => runner.models.current(task),
        install: (task, file, release) => runner.models.install(task, file, release),
      },
      quiesce: async () => {
        for (const c of intake) await c.stop();
      },
      drain: (signal) => runner.close(signal),
    };
  },
};

const scheduledInput = z.strictObject({ feeds: wireFeeds });

/** How often a failed golden sample is run again. */
const GOLDEN_RETRY_MS = 30_000;

/** A scheduled `onnx` task's file: `{"feeds": {...}}`, as in `task.run`. */
function scheduledFeeds(bytes: Buffer): TaskInput {
  const parsed = scheduledInput.safeParse(JSON.parse(bytes.toString("utf8")));
  if (!parsed.success) throw new Error(`expected {"feeds": {...}}: ${parsed.error.issues[0]?.message ?? ""}`);
  return { feeds: parsed.data.feeds };
}
