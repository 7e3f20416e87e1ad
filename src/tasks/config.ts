import { z } from "zod";
import { duration, MAX_LIST } from "../config/schema.ts";
import type { Typed } from "../config/schema-walk.ts";
import { configSection } from "../kernel/module.ts";

const TASK_NAME = /^[a-z0-9][a-z0-9_-]{0,62}$/;

const model = z.string().min(1).describe("path of the .onnx file on the device");

/** How a JPEG or PNG becomes the model's input: size, channels, value = (pixel * scale - mean) / std. */
const imageInput = z
  .strictObject({
    width: z.number().int().min(1).max(4096),
    height: z.number().int().min(1).max(4096),
    channels: z.union([z.literal(1), z.literal(3)]).default(1),
    scale: z
      .number()
      .positive()
      .default(1 / 255),
    mean: z.array(z.number()).min(1).max(3).default([0]),
    std: z.array(z.number().positive()).min(1).max(3).default([1]),
  })
  .describe("how an image becomes the input tensor [1, channels, height, width]");

/** A folder a camera drops images into; each is processed once and moved to done/ or failed/ beside it. */
const watch = z
  .strictObject({
    dir: z.string().min(1).describe("the folder; its inbox/, done/ and failed/ are created"),
    // An image counts once it has been renamed into inbox/ (the camera writes elsewhere, then renames), or once
    // its size and modification time have not changed for this long.
    settle: duration("2s", 0, 600_000),
    poll: duration("1s", 10, 600_000),
    // A frame found in work/ without a result at this many starts was in flight at each crash (a frame that
    // kills the agent): it is moved to failed/ with TASK_INPUT_QUARANTINED instead of running again.
    quarantineAfter: z.number().int().min(1).max(100).default(2),
  })
  .optional();

/**
 * Runs the task every `every` on a file the device keeps current (a camera's latest frame; for `onnx`, a JSON
 * file `{"feeds": {...}}`). A file that cannot be read is logged and the run skipped.
 */
const schedule = z
  .strictObject({
    every: duration("1m", 100, 86_400_000),
    file: z.string().min(1),
  })
  .optional();

const common = {
  timeout: duration("10s", 10, 600_000).describe("from the moment a worker takes the task"),
  schedule,
};

const onnxTask = z.strictObject({
  type: z.literal("onnx"),
  model,
  ...common,
});

const classifyTask = z.strictObject({
  type: z.literal("classify-image"),
  model,
  labels: z.array(z.string().min(1)).min(1).max(1000),
  /** The model output that holds the scores; default: its first. */
  output: z.string().min(1).optional(),
  input: imageInput,
  pass: z
    .strictObject({
      labels: z.array(z.string().min(1)).min(1),
      minScore: z.number().min(0).max(1).default(0.5),
    })
    .describe("the verdict is pass when the top label is one of these with at least minScore"),
  /**
   * An image whose label is known: run at every start (the agent is not healthy until it gives that label,
   * so an update on trial that breaks the task rolls back) and before a new model is kept.
   */
  golden: z.strictObject({ image: z.string().min(1), label: z.string().min(1) }).optional(),
  watch,
  ...common,
});

const checksTask = z.strictObject({
  type: z.literal("checks"),
  /** Names of classify-image tasks run on the same input in parallel; the first to fail cancels the others. */
  checks: z.array(z.string().regex(TASK_NAME)).min(1).max(16),
  watch,
  ...common,
});

const thresholdTask = z.strictObject({
  type: z.literal("threshold"),
  /** A dotted path into the telemetry metrics, e.g. `temperature.cpu`. */
  metric: z.string().min(1),
  above: z.number().optional(),
  below: z.number().optional(),
  for: duration("0s", 0, 86_400_000).describe("how long the condition must hold before the alarm is raised"),
  /** How far back past the limit the value must come before the alarm clears (hysteresis). */
  hysteresis: z.number().min(0).default(0),
});

export const taskDefinition = z.discriminatedUnion("type", [onnxTask, classifyTask, checksTask, thresholdTask]);
/** A task as the runner reads it: durations in milliseconds (the typed view, config/schema-walk.ts). */
export type TaskDefinition = Typed<z.output<typeof taskDefinition>>;
export type ClassifyDefinition = Typed<z.output<typeof classifyTask>>;

/** The tasks module's section: the worker pool and the tasks, by name. */
export const tasksSection = configSection({
  key: "tasks",
  schema: z
    .strictObject({
      // auto: onnxruntime-node, or onnxruntime-web (WASM) when the native one cannot be extracted or loaded.
      runtime: z.enum(["auto", "native", "wasm"]).default("auto"),
      /** Where the binary's native runtime is extracted; default `<state.dir>/runtime`. Must allow exec. */
      runtimeDir: z.string().min(1).nullable().default(null),
      /** Worker threads at most; default: cores - 1, at least 1. */
      workers: z.number().int().min(1).max(64).nullable().default(null),
      queue: z.number().int().min(0).max(10_000).default(32),
      /**
       * How long a worker may take to load the runtime and a model before a task's own timeout starts (a
       * first task compiles WebAssembly or creates a session: seconds on a small board).
       */
      loadTimeout: duration("2m", 1000, 1_800_000),
      /**
       * How long a worker may wait for a task before it is released (terminated); the next task starts a new
       * one and loads again. "0s", the default: kept for good. Off by default because, measured, it gives
       * little back: with the native runtime the process's allocator keeps most of what a worker freed, and
       * after three releases the agent holds as much as with the worker kept (docs/tasks.md).
       */
      idleRelease: duration("0s", 0, 86_400_000),
      /** Each worker's JavaScript heap cap (MiB); native memory is not counted (docs/tasks.md). */
      workerHeapMb: z.number().int().min(16).max(4096).default(128),
      breaker: z
        .strictObject({
          failures: z.number().int().min(1).max(1000).default(5),
          open: duration("30s", 100, 3_600_000),
        })
        .prefault({}),
      define: z
        .record(z.string().regex(TASK_NAME, "a task name: lower case letters, digits, - and _"), taskDefinition)
        .refine((r) => Object.keys(r).length <= MAX_LIST, { message: `at most ${MAX_LIST} tasks` })
        .default({}),
    })
    .superRefine((tasks, ctx) => {
      for (const [name, def] of Object.entries(tasks.define)) {
        if (def.type === "checks") {
          for (const [i, check] of def.checks.entries()) {
            const target = tasks.define[check];
            if (target?.type !== "classify-image") {
              ctx.addIssue({
                code: "custom",
                path: ["define", name, "checks", i],
                message: `expected the name of a classify-image task, found ${JSON.stringify(check)}`,
              });
            }
          }
        }
        if (def.type === "threshold" && def.above === undefined && def.below === undefined) {
          ctx.addIssue({ code: "custom", path: ["define", name], message: "expected above or below (or both)" });
        }
      }
    })
    .prefault({}),
  // Read once when the module is built (the pool, the watchers, the rules): a change applies at the next start.
  restartOnly: [""],
  // Paths on the device (models, watched folders, the runtime's directory) come from the file only: a request
  // must never name a device path.
  localOnly: [""],
});

export type TasksConfig = Typed<z.output<typeof tasksSection.schema>>;
