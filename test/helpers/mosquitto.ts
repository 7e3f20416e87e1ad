import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "./ports.ts";

// A failed test must not leave brokers behind or keep the test process alive.
const running = new Set<ChildProcess>();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

export interface BrokerOptions {
  /** A port chosen beforehand (for an agent that must start before its broker). */
  port?: number;
  /** Extra lines for mosquitto.conf, after a plain-TCP listener. */
  extra?: string[];
  /** Replaces the default listener block entirely (for TLS listeners). */
  listener?: (port: number) => string[];
}

/** A real mosquitto in the foreground on a free loopback port, one per test file. */
export class Mosquitto {
  readonly port: number;
  readonly dir: string;
  private child: ChildProcess | undefined;

  /** The broker's process id while it runs (a bench reads its CPU and memory). */
  get pid(): number | undefined {
    return this.child?.pid;
  }
  private readonly conf: string;
  log = "";

  private constructor(port: number, dir: string, conf: string) {
    this.port = port;
    this.dir = dir;
    this.conf = conf;
  }

  static async start(options: BrokerOptions = {}): Promise<Mosquitto> {
    const port = options.port ?? (await freePort());
    const dir = mkdtempSync(join(tmpdir(), "outpost-mosquitto-"));
    const lines = [
      ...(options.listener ? options.listener(port) : [`listener ${port} 127.0.0.1`, "allow_anonymous true"]),
      "set_tcp_nodelay true",
      "log_dest stderr",
      "log_type error",
      "log_type warning",
      "log_type notice",
      "log_type information",
      `persistence_location ${dir}/`,
      ...(process.getuid?.() === 0 ? ["user root"] : []),
      ...(options.extra ?? []),
    ];
    const conf = join(dir, "mosquitto.conf");
    writeFileSync(conf, `${lines.join("\n")}\n`);
    const broker = new Mosquitto(port, dir, conf);
    await broker.resume();
    return broker;
  }

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  /** Starts (again) on the same port and configuration; resolves once it listens. */
  resume(): Promise<void> {
    const child = spawn("mosquitto", ["-c", this.conf], { stdio: ["ignore", "ignore", "pipe"] });
    this.child = child;
    running.add(child);
    child.once("exit", () => running.delete(child));
    child.unref();
    // Only this start's output counts: the log keeps the "running" line of the previous one.
    const from = this.log.length;
    return new Promise((resolve, reject) => {
      const onData = (chunk: Buffer) => {
        this.log += chunk.toString();
        if (/mosquitto version [\d.]+ running/.test(this.log.slice(from))) {
          child.stderr?.off("data", onData);
          (child.stderr as unknown as { unref?: () => void } | null)?.unref?.();
          child.stderr?.on("data", (c: Buffer) => {
            this.log += c.toString();
          });
          resolve();
        }
      };
      child.stderr?.on("data", onData);
      child.once("exit", (code) => reject(new Error(`mosquitto exited with ${code}: ${this.log}`)));
      // Not installed (scripts/install-deps.sh): fail the test at once instead of hanging it.
      child.once("error", (err) => reject(new Error(`mosquitto did not start: ${err.message}`)));
    });
  }

  /** Reloads the configuration's files (password and ACL files): mosquitto's SIGHUP. */
  reload(): void {
    this.child?.kill("SIGHUP");
  }

  /** Stops the broker (SIGTERM, or SIGKILL for a crash) and waits until it is gone. */
  async halt(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    // Unreferenced while it runs (see resume); waiting for its exit must keep this process alive.
    child.ref();
    child.kill(signal);
    await exited;
  }

  async stop(): Promise<void> {
    await this.halt();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
