import { type ChildProcess, spawn } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { stringify } from "yaml";
import { tempDir } from "./temp.ts";
import { Collected } from "./wait.ts";

export const ROOT = resolve(import.meta.dirname, "..", "..");
export const MAIN = join(ROOT, "src", "main.ts");

const running = new Set<ChildProcess>();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** How to start outpost: from source on the pinned Node, or a built binary (optionally under qemu). */
export function sourceCommand(): string[] {
  return [process.execPath, MAIN];
}

/** A running outpost process with its output split into lines. */
export class AgentProcess {
  readonly child: ChildProcess;
  readonly stdout = new Collected<string>();
  readonly stderr = new Collected<string>();
  readonly exited: Promise<Exit>;
  readonly dir: string;

  constructor(command: string[], args: string[], options: { env?: Record<string, string>; dir?: string } = {}) {
    const [bin, ...pre] = command;
    if (!bin) throw new Error("empty command");
    this.dir = options.dir ?? tempDir("outpost-agent-");
    this.child = spawn(bin, [...pre, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { PATH: process.env.PATH ?? "", HOME: this.dir, ...options.env },
    });
    running.add(this.child);
    this.child.once("exit", () => running.delete(this.child));
    split(this.child.stdout, this.stdout);
    split(this.child.stderr, this.stderr);
    this.exited = new Promise((resolve) => {
      this.child.once("exit", (code, signal) => resolve({ code, signal }));
    });
  }

  /** Starts `outpost run` with a config file made from `config`. */
  static run(
    command: string[],
    config: Record<string, unknown>,
    env: Record<string, string> = {},
    reuseDir?: string,
  ): AgentProcess {
    // Reusing a directory keeps state.dir, so a restarted agent finds its outbox.
    const dir = reuseDir ?? tempDir("outpost-agent-");
    const path = join(dir, "config.yaml");
    const withState = { state: { dir: join(dir, "state") }, ...config };
    writeFileSync(path, stringify(withState));
    return new AgentProcess(command, ["run", "--config", path], { env, dir });
  }

  /** The JSON log lines the agent wrote so far. */
  logs(): Record<string, unknown>[] {
    return this.stdout.items.flatMap((line) => {
      try {
        return [JSON.parse(line) as Record<string, unknown>];
      } catch {
        return [];
      }
    });
  }

  waitForLog(msg: string, timeoutMs = 15_000): Promise<string> {
    return this.stdout.waitFor((line) => line.includes(`"msg":"${msg}"`), timeoutMs, `log "${msg}"`);
  }

  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<Exit> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }

  async cleanup(): Promise<void> {
    await this.stop("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function split(stream: NodeJS.ReadableStream | null, into: Collected<string>): void {
  let buffer = "";
  stream?.on("data", (chunk: Buffer) => {
    buffer += chunk.toString();
    let nl = buffer.indexOf("\n");
    while (nl >= 0) {
      into.push(buffer.slice(0, nl));
      buffer = buffer.slice(nl + 1);
      nl = buffer.indexOf("\n");
    }
  });
}
