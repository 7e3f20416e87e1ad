// Issue 24 items 5 and 8: the structure rules of docs/architecture.md as a check, so that later work keeps
// them: no import circle between files, core/ imports nothing of ours, a module's folder never imports
// another's, config/ never loads the module list, and no file in src/ is longer than 400 lines.
import assert from "node:assert/strict";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { test } from "node:test";
import { ROOT } from "../helpers/agent-process.ts";

const SRC = join(ROOT, "src");

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return sources(path);
    return path.endsWith(".ts") ? [path] : [];
  });
}

const files = sources(SRC);

/** What a file imports of ours at run time: static imports and exports (not `import type`), and `import()`. */
function importsOf(file: string): string[] {
  const text = readFileSync(file, "utf8");
  const found = [
    ...text.matchAll(/^(?:import|export)\s(?!type\s)[^;]*?from\s+"(\.[^"]+)"|import\("(\.[^"]+)"\)/gms),
  ].map((m) => resolve(dirname(file), m[1] ?? m[2] ?? ""));
  return found.filter((path) => files.includes(path));
}

const graph = new Map(files.map((f) => [f, importsOf(f)]));
const rel = (f: string) => relative(SRC, f);

test("no import circle between files", () => {
  // Tarjan's strongly connected components: any with more than one file is a circle.
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const circles: string[][] = [];
  const visit = (v: string) => {
    index.set(v, next);
    low.set(v, next);
    next += 1;
    stack.push(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v) ?? 0, low.get(w) ?? 0));
      } else if (stack.includes(w)) low.set(v, Math.min(low.get(v) ?? 0, index.get(w) ?? 0));
    }
    if (low.get(v) === index.get(v)) {
      const component: string[] = [];
      let w: string | undefined;
      do {
        w = stack.pop();
        if (w !== undefined) component.push(rel(w));
      } while (w !== undefined && w !== v);
      if (component.length > 1) circles.push(component);
    }
  };
  for (const f of files) if (!index.has(f)) visit(f);
  assert.deepEqual(circles, []);
});

test("core/ imports nothing of ours outside core/", () => {
  const outside = files
    .filter((f) => rel(f).startsWith("core/"))
    .flatMap((f) =>
      (graph.get(f) ?? []).filter((d) => !rel(d).startsWith("core/")).map((d) => `${rel(f)} -> ${rel(d)}`),
    );
  assert.deepEqual(outside, []);
});

test("a module's folder imports no other module's files", () => {
  const modules = [...readFileSync(join(SRC, "modules.ts"), "utf8").matchAll(/from "\.\/([a-z-]+)\/module\.ts"/g)].map(
    (m) => m[1] ?? "",
  );
  assert.ok(modules.length >= 8, modules.join(", "));
  const folderOf = (f: string) => rel(f).split("/")[0] ?? "";
  const crossing = files
    .filter((f) => modules.includes(folderOf(f)))
    .flatMap((f) =>
      (graph.get(f) ?? [])
        .filter((d) => modules.includes(folderOf(d)) && folderOf(d) !== folderOf(f))
        .map((d) => `${rel(f)} -> ${rel(d)}`),
    );
  assert.deepEqual(crossing, []);
});

test("config/ never loads the module list: the root hands it the schema", () => {
  const reached = (start: string) => {
    const seen = new Set<string>([start]);
    const queue = [start];
    for (let f = queue.shift(); f !== undefined; f = queue.shift()) {
      for (const d of graph.get(f) ?? []) {
        if (!seen.has(d)) {
          seen.add(d);
          queue.push(d);
        }
      }
    }
    return seen;
  };
  const forbidden = new Set(["modules.ts", "schema.ts"]);
  const loads = files
    .filter((f) => rel(f).startsWith("config/"))
    .flatMap((f) => [...reached(f)].filter((d) => forbidden.has(rel(d))).map((d) => `${rel(f)} -> ${rel(d)}`));
  assert.deepEqual(loads, []);
});

/** The longest a file in src/ may be: a longer one does several jobs (split it along them). */
const MAX_LINES = 400;

test(`no file in src/ is longer than ${MAX_LINES} lines`, () => {
  const long = files
    .map((f) => ({ file: rel(f), lines: readFileSync(f, "utf8").split("\n").length - 1 }))
    .filter(({ lines }) => lines > MAX_LINES)
    .map(({ file, lines }) => `${file}: ${lines}`);
  assert.deepEqual(long, []);
});
