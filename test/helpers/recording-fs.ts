import { createHash } from "node:crypto";
import { basename, dirname } from "node:path";
import { type PinnedDir, UntrustedFileError } from "../../src/core/pinned-dir.ts";
import type { InstallFs } from "../../src/ota/install.ts";

type Node =
  | { kind: "file"; data: Buffer; durable: Buffer; mode: number }
  | { kind: "link"; target: string }
  | { kind: "dir"; entries: Map<string, Node>; durable: Map<string, Node> };

/** Thrown by every operation once the power is cut: the installer gets no further. */
export class PowerCut extends Error {}

/**
 * A file system that keeps what a power cut keeps, for the installer's InstallFs: a file's content is on the
 * disk only once the file was fsynced, a directory entry (a create, a rename, an unlink) only once its
 * directory was fsynced. A symlink's target lives in its inode, written with the entry. `cut()` returns the
 * state after the cut: everything not fsynced is gone, and /run (a tmpfs) is empty.
 */
export class RecordingFs implements InstallFs {
  private root: Extract<Node, { kind: "dir" }> = { kind: "dir", entries: new Map(), durable: new Map() };
  /** Operations done so far; when `cutAt` is reached, the power goes. */
  ops = 0;
  cutAt = Number.POSITIVE_INFINITY;
  log: string[] = [];

  /** A durable starting tree: every path given, its parents made. */
  static from(files: Record<string, Buffer | string | { link: string }>): RecordingFs {
    const fs = new RecordingFs();
    for (const [path, content] of Object.entries(files)) {
      fs.mkdir(dirname(path), 0o755);
      if (typeof content === "object" && "link" in content) fs.symlink(content.link, path);
      else fs.writeFile(path, content, 0o755);
      fs.syncAll(fs.root);
    }
    fs.ops = 0;
    fs.log = [];
    return fs;
  }

  private step(what: string): void {
    if (this.ops >= this.cutAt) throw new PowerCut(`power cut before ${what}`);
    this.ops += 1;
    this.log.push(what);
  }

  private syncAll(dir: Extract<Node, { kind: "dir" }>): void {
    dir.durable = new Map(dir.entries);
    for (const node of dir.entries.values()) {
      if (node.kind === "dir") this.syncAll(node);
      if (node.kind === "file") node.durable = node.data;
    }
  }

  private lookup(path: string): Node | undefined {
    let node: Node = this.root;
    for (const part of path.split("/").filter(Boolean)) {
      if (node.kind !== "dir") return undefined;
      const next = node.entries.get(part);
      if (!next) return undefined;
      node = next;
    }
    return node;
  }

  private parent(path: string): Extract<Node, { kind: "dir" }> {
    const p = this.lookup(dirname(path));
    if (p?.kind !== "dir") throw new Error(`ENOENT: ${dirname(path)}`);
    return p;
  }

  private file(path: string): Extract<Node, { kind: "file" }> {
    const n = this.lookup(path);
    if (n?.kind !== "file") throw new Error(`ENOENT: ${path} is not a file`);
    return n;
  }

  /** The tree as the disk holds it after the power comes back; /run is a fresh tmpfs. */
  cut(): RecordingFs {
    const copy = (dir: Extract<Node, { kind: "dir" }>): Extract<Node, { kind: "dir" }> => {
      const entries = new Map<string, Node>();
      for (const [name, node] of dir.durable) {
        if (node.kind === "dir") entries.set(name, copy(node));
        else if (node.kind === "file") entries.set(name, { ...node, data: node.durable });
        else entries.set(name, node);
      }
      return { kind: "dir", entries, durable: new Map(entries) };
    };
    const next = new RecordingFs();
    next.root = copy(this.root);
    next.root.entries.delete("run");
    next.root.durable.delete("run");
    return next;
  }

  // --- InstallFs ---

  exists(path: string): boolean {
    return this.lookup(path) !== undefined;
  }

  readFile(path: string): Buffer {
    return this.file(path).data;
  }

  writeFile(path: string, data: Uint8Array | string, mode: number): void {
    this.step(`write ${path}`);
    const buf = Buffer.from(data);
    this.parent(path).entries.set(basename(path), { kind: "file", data: buf, durable: Buffer.alloc(0), mode });
  }

  chmod(path: string, mode: number): void {
    this.step(`chmod ${path}`);
    this.file(path).mode = mode;
  }

  sha256(path: string): { sha256: string; size: number } {
    const data = this.readFile(path);
    return { sha256: createHash("sha256").update(data).digest("hex"), size: data.length };
  }

  fsync(path: string): void {
    this.step(`fsync ${path}`);
    const n = this.lookup(path);
    if (!n) throw new Error(`ENOENT: ${path}`);
    if (n.kind === "file") n.durable = n.data;
    if (n.kind === "dir") n.durable = new Map(n.entries);
  }

  rename(from: string, to: string): void {
    this.step(`rename ${from} ${to}`);
    const node = this.lookup(from);
    if (!node) throw new Error(`ENOENT: ${from}`);
    this.parent(from).entries.delete(basename(from));
    this.parent(to).entries.set(basename(to), node);
  }

  symlink(target: string, path: string): void {
    this.step(`symlink ${path} -> ${target}`);
    this.parent(path).entries.set(basename(path), { kind: "link", target });
  }

  readlink(path: string): string | undefined {
    const n = this.lookup(path);
    return n?.kind === "link" ? n.target : undefined;
  }

  mkdir(path: string, _mode: number): void {
    const parts = path.split("/").filter(Boolean);
    for (let i = 1; i <= parts.length; i++) {
      const p = `/${parts.slice(0, i).join("/")}`;
      if (this.lookup(p)) continue;
      this.step(`mkdir ${p}`);
      this.parent(p).entries.set(basename(p), { kind: "dir", entries: new Map(), durable: new Map() });
    }
  }

  unlink(path: string): void {
    if (!this.lookup(path)) return;
    this.step(`unlink ${path}`);
    this.parent(path).entries.delete(basename(path));
  }

  removeTree(path: string): void {
    this.unlink(path);
  }

  list(path: string): string[] {
    const n = this.lookup(path);
    return n?.kind === "dir" ? [...n.entries.keys()] : [];
  }

  scan(path: string, pattern: RegExp): RegExpExecArray | undefined {
    return pattern.exec(this.readFile(path).toString("latin1")) ?? undefined;
  }

  ownByRoot(_path: string, _mode: number): boolean {
    return false;
  }

  /** The agent's directory as root's pinned view of it: plain names, the same recorded operations. */
  pinned<T>(dir: string, _owner: number, fn: (d: PinnedDir) => T): T {
    const at = (name: string) => `${dir}/${name}`;
    return fn({
      has: (name) => this.exists(at(name)),
      read: (name) => this.readFile(at(name)),
      copyOut: (name, size, to, mode) => {
        // As the real one: fstat must say exactly the declared size.
        const data = this.readFile(at(name));
        if (data.length !== size) throw new UntrustedFileError(`${name}: ${data.length} bytes, not ${size}`);
        this.writeFile(to, data, mode);
        this.fsync(to);
        return createHash("sha256").update(data).digest("hex");
      },
      remove: (name) => this.unlink(at(name)),
      sync: () => this.fsync(dir),
    });
  }

  /** A link's target resolved against its directory, the file there read: what systemd would start. */
  resolveBinary(link: string, file: string): Buffer | undefined {
    const target = this.readlink(link);
    if (target === undefined) return undefined;
    const n = this.lookup(`${dirname(link)}/${target}/${file}`);
    return n?.kind === "file" ? n.data : undefined;
  }
}
