import { join } from "node:path";

/** One line of docs/ota.md's list of what root's update units touch. */
export interface RootPathRule {
  access: "read" | "write" | "pin" | "agent";
  pattern: RegExp;
  text: string;
}

/**
 * The list between `<!-- root-paths -->` and `<!-- /root-paths -->` in docs/ota.md: lines of `ACCESS PATTERN
 * why`, where ACCESS is read, write (read too), pin (a chdir into the agent's directory) or agent (plain
 * names there, relative to the pinned directory: read through O_NOFOLLOW, or unlinked), and PATTERN a path
 * with `*` (within one component) and `**` (across components).
 */
export function documentedRootPaths(markdown: string): RootPathRule[] {
  const block = /<!-- root-paths[^>]*-->([\s\S]*?)<!-- \/root-paths -->/.exec(markdown)?.[1];
  if (!block) throw new Error("docs/ota.md has no root-paths list");
  const rules: RootPathRule[] = [];
  for (const line of block.split("\n")) {
    const m = /^(read|write|pin|agent)\s+(\S+)/.exec(line.trim());
    if (!m) continue;
    const [, access, glob] = m as unknown as [string, RootPathRule["access"], string];
    const re = glob
      .split("**")
      .map((part) =>
        part
          .split("*")
          .map((s) => s.replace(/[.+?^${}()|[\]\\]/g, "\\$&"))
          .join("[^/]*"),
      )
      .join(".*");
    rules.push({ access, pattern: new RegExp(`^${re}$`), text: line.trim() });
  }
  return rules;
}

const WRITES = new Set([
  "unlink",
  "unlinkat",
  "rename",
  "renameat",
  "renameat2",
  "mkdir",
  "mkdirat",
  "rmdir",
  "symlink",
  "symlinkat",
  "link",
  "linkat",
  "chmod",
  "fchmodat",
  "fchmodat2",
  "chown",
  "lchown",
  "fchownat",
  "truncate",
  "utimensat",
  "mknod",
  "mknodat",
  "creat",
]);

interface Touch {
  syscall: string;
  /** Absolute: as named, or resolved against a known directory. Relative: a name in the pinned directory. */
  path: string;
  relative: boolean;
  write: boolean;
  nofollow: boolean;
}

/**
 * The paths of one strace line (`strace -y`: a dirfd shows as `N</path>`, AT_FDCWD as `AT_FDCWD</cwd>`). A name
 * relative to the pinned directory (the process moved there, or AT_FDCWD shows it) stays relative: it is
 * checked against the agent's names. `.` is always the directory the process was given.
 */
function touches(line: string, cwd: string | undefined, isPin: (path: string) => boolean): Touch[] {
  const m = /^(\w+)\((.*)\)\s+=\s+/.exec(line);
  if (!m) return [];
  const [, syscall = "", args = ""] = m;
  // getcwd's string is what it returned; chdir is checked on its own.
  if (syscall === "getcwd" || syscall === "chdir") return [];
  const tokens = [...args.matchAll(/"((?:[^"\\]|\\.)*)"|AT_FDCWD(?:<([^>]*)>)?|\d+<([^>]*)>/g)];
  const paths: { path: string; relative: boolean }[] = [];
  let base: string | undefined;
  let quoted = 0;
  for (const t of tokens) {
    if (t[0].startsWith("AT_FDCWD")) {
      base = t[2] ?? cwd;
      continue;
    }
    if (t[3] !== undefined) {
      base = t[3];
      continue;
    }
    quoted += 1;
    const name = (t[1] ?? "").replace(/\\"/g, '"');
    const dirfd = base;
    base = undefined;
    // readlink's second string is the link's content; symlink's first is the target: neither is touched.
    if ((syscall === "readlink" || syscall === "readlinkat") && quoted > 1) continue;
    if ((syscall === "symlink" || syscall === "symlinkat") && quoted === 1) continue;
    if (syscall === "execve" && quoted > 1) continue;
    if (name === "") continue;
    const from = dirfd ?? cwd;
    if (name.startsWith("/")) paths.push({ path: name, relative: false });
    else if (name === "." || from === undefined || isPin(from) || (cwd !== undefined && isPin(cwd)))
      paths.push({ path: name, relative: true });
    else paths.push({ path: join(from, name), relative: false });
  }
  const flags = /O_WRONLY|O_RDWR|O_CREAT|O_TRUNC/.test(args);
  const write = WRITES.has(syscall) || (/^open/.test(syscall) && flags);
  return paths.map((p) => ({ syscall, ...p, write, nofollow: /O_NOFOLLOW/.test(args) }));
}

/**
 * Checks strace -ff -y outputs (one per process) against the documented rules; returns one line per
 * problem (empty: everything touched is listed, with the access it had).
 */
export function checkTraces(traces: readonly string[], rules: readonly RootPathRule[]): string[] {
  const problems = new Set<string>();
  const pins = rules.filter((r) => r.access === "pin");
  const agentNames = rules.filter((r) => r.access === "agent");
  const isPin = (path: string) => pins.some((r) => r.pattern.test(path));
  for (const trace of traces) {
    // A process starts in its parent's directory: strace shows it wherever AT_FDCWD is used; a bare relative
    // name before any chdir is taken for a name in the agent's directory (the stricter reading).
    let cwd: string | undefined;
    for (const line of trace.split("\n")) {
      const chdir = /^chdir\("([^"]*)"\)\s+=\s+(-?\d+)/.exec(line);
      if (chdir) {
        const to = chdir[1] ?? "";
        if (to !== "/" && !isPin(to)) problems.add(`chdir into ${to}: not a documented pin`);
        if (chdir[2] === "0") cwd = to;
        continue;
      }
      for (const t of touches(line, cwd, isPin)) {
        if (t.relative) {
          const rule = agentNames.find((r) => r.pattern.test(t.path));
          if (!rule) problems.add(`${t.syscall} ${t.path}: a relative name not listed for the agent's directory`);
          else if (t.write && t.syscall !== "unlink" && t.syscall !== "unlinkat")
            problems.add(`${t.syscall} ${t.path}: written in the agent's directory`);
          else if (/^open/.test(t.syscall) && t.path !== "." && !t.nofollow)
            problems.add(`${t.syscall} ${t.path}: opened in the agent's directory without O_NOFOLLOW`);
          continue;
        }
        const rule = rules.find((r) => (r.access === "read" || r.access === "write") && r.pattern.test(t.path));
        if (!rule) problems.add(`${t.syscall} ${t.path}: not listed`);
        else if (t.write && rule.access !== "write") problems.add(`${t.syscall} ${t.path}: written, listed as read`);
      }
    }
  }
  return [...problems].sort();
}
