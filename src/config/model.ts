import type { z } from "zod";
import type { ParsedConfig } from "../schema.ts";

/**
 * What the root hands the loader and the store: the whole file's schema (the kernel's sections and every
 * module's) and which keys change only at a restart or only in the file. config/ never imports the module
 * list itself, so that loading a file does not load every module's code (the type import is erased).
 */
export interface ConfigModel {
  schema: z.ZodType<ParsedConfig>;
  restartKeys: readonly string[];
  localOnlyKeys: readonly string[];
}
