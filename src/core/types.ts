/** Types shared by the kernel, the modules and the CLI (no code). */

type Primitive = string | number | boolean | bigint | symbol | null | undefined;
type Deeper = [never, 0, 1, 2, 3, 4, 5];

/**
 * The dotted paths below a value of type T, at most D levels deep: objects are walked, arrays are leaves, a
 * record's key is any string (`jetson.rails.${string}.watts`). A string literal typed by it stops compiling
 * when the field it names is renamed.
 */
export type PathsBelow<T, D extends number = 5> = [D] extends [never]
  ? never
  : T extends Primitive | readonly unknown[]
    ? never
    : T extends object
      ? { [K in keyof T & string]-?: K | `${K}.${PathsBelow<NonNullable<T[K]>, Deeper[D]>}` }[keyof T & string]
      : never;
