import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "./ports.ts";
import { run } from "./run.ts";

/** Debian's rabbitmq-server 3.10 (scripts/install-deps.sh), run from its own scripts, not as a service. */
const SBIN = "/usr/lib/rabbitmq/lib/rabbitmq_server-3.10.8/sbin";

export const rabbitmqInstalled = (): boolean => existsSync(join(SBIN, "rabbitmq-server"));

// A failed test must not leave Erlang nodes behind or keep the test process alive.
const groups = new Set<number>();
process.on("exit", () => {
  for (const pid of groups) {
    try {
      process.kill(-pid, "SIGKILL");
    } catch {
      // Gone already.
    }
  }
});

interface RabbitNode {
  name: string;
  mqttPort: number;
  url: string;
  child: ChildProcess | undefined;
}

/**
 * A RabbitMQ cluster of nodes on this machine, each in a directory of its own under one temporary directory,
 * with its own epmd port (nothing shared with a system RabbitMQ), the MQTT plugin on, anonymous MQTT logins
 * allowed. Started fresh by each test file that uses it; `stop()` kills every process and removes the files.
 */
export class RabbitCluster {
  readonly dir: string;
  readonly nodes: RabbitNode[] = [];
  private readonly epmdPort: number;
  private epmd: ChildProcess | undefined;

  private constructor(dir: string, epmdPort: number) {
    this.dir = dir;
    this.epmdPort = epmdPort;
  }

  static async start(count = 2, timeoutMs = 240_000): Promise<RabbitCluster> {
    const cluster = new RabbitCluster(mkdtempSync(join(tmpdir(), "outpost-rabbitmq-")), await freePort());
    try {
      // Our own epmd, in the foreground: the nodes would start one as a daemon, which outlives them.
      const epmd = spawn("epmd", ["-port", String(cluster.epmdPort)], { stdio: "ignore", detached: true });
      cluster.epmd = epmd;
      if (epmd.pid !== undefined) groups.add(epmd.pid);
      epmd.unref();
      await listening(cluster.epmdPort, timeoutMs, epmd);
      for (let i = 0; i < count; i++) {
        const name = `outpost${i}@localhost`;
        const mqttPort = await freePort();
        cluster.nodes.push({ name, mqttPort, url: `mqtt://127.0.0.1:${mqttPort}`, child: undefined });
      }
      // Both boot at once (about 16 s on 2 cores), then the others join the first.
      await Promise.all(cluster.nodes.map((n) => cluster.boot(n, timeoutMs)));
      const [first, ...rest] = cluster.nodes;
      for (const node of rest) {
        for (const args of [["stop_app"], ["join_cluster", first?.name ?? ""], ["start_app"]]) {
          const r = await cluster.ctl(node, args, timeoutMs);
          if (r.code !== 0) throw new Error(`rabbitmqctl ${args.join(" ")} on ${node.name}: ${r.stdout}${r.stderr}`);
        }
        await listening(node.mqttPort, timeoutMs);
      }
      return cluster;
    } catch (err) {
      await cluster.stop();
      throw err;
    }
  }

  private env(node: RabbitNode): NodeJS.ProcessEnv {
    const d = join(this.dir, node.name.split("@")[0] ?? "node");
    return {
      ...process.env,
      HOME: join(d, "home"),
      RABBITMQ_NODENAME: node.name,
      ERL_EPMD_PORT: String(this.epmdPort),
      RABBITMQ_MNESIA_BASE: join(d, "mnesia"),
      RABBITMQ_LOG_BASE: join(d, "log"),
      RABBITMQ_PLUGINS_EXPAND_DIR: join(d, "plugins"),
      RABBITMQ_ENABLED_PLUGINS_FILE: join(d, "enabled_plugins"),
      RABBITMQ_CONFIG_FILE: join(d, "rabbitmq.conf"),
      RABBITMQ_PID_FILE: join(d, "pid"),
    };
  }

  private async boot(node: RabbitNode, timeoutMs: number): Promise<void> {
    const env = this.env(node);
    const home = env.HOME ?? "";
    mkdirSync(home, { recursive: true });
    // The nodes of one cluster share the Erlang cookie.
    writeFileSync(join(home, ".erlang.cookie"), "OUTPOSTTESTCOOKIE", { mode: 0o600 });
    writeFileSync(env.RABBITMQ_ENABLED_PLUGINS_FILE ?? "", "[rabbitmq_mqtt].\n");
    const [amqp, dist] = [await freePort(), await freePort()];
    writeFileSync(
      env.RABBITMQ_CONFIG_FILE ?? "",
      [
        `listeners.tcp.default = 127.0.0.1:${amqp}`,
        `mqtt.listeners.tcp.default = 127.0.0.1:${node.mqttPort}`,
        "mqtt.allow_anonymous = true",
        "loopback_users = none",
        "log.console = false",
        "log.file.level = warning",
        "",
      ].join("\n"),
    );
    const child = spawn(join(SBIN, "rabbitmq-server"), [], {
      env: { ...env, RABBITMQ_DIST_PORT: String(dist) },
      stdio: "ignore",
      detached: true,
    });
    node.child = child;
    if (child.pid !== undefined) groups.add(child.pid);
    child.unref();
    await listening(node.mqttPort, timeoutMs, child);
  }

  private ctl(node: RabbitNode, args: string[], timeoutMs: number) {
    return run([join(SBIN, "rabbitmqctl"), "-n", node.name, ...args], { env: this.env(node), timeoutMs });
  }

  /** The node goes down hard (SIGKILL of its processes): what a machine that loses power does to a cluster. */
  async kill(index: number): Promise<void> {
    const node = this.nodes[index];
    const pid = node?.child?.pid;
    if (!node || pid === undefined) return;
    const gone = new Promise((resolve) => node.child?.once("exit", resolve));
    try {
      process.kill(-pid, "SIGKILL");
    } catch {
      // Gone already.
    }
    await gone;
    groups.delete(pid);
    node.child = undefined;
  }

  async stop(): Promise<void> {
    for (const i of this.nodes.keys()) await this.kill(i);
    const epmd = this.epmd;
    if (epmd?.pid !== undefined && epmd.exitCode === null) {
      const gone = new Promise((resolve) => epmd.once("exit", resolve));
      epmd.kill("SIGKILL");
      await gone;
      groups.delete(epmd.pid);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Resolves once something accepts connections on the port; fails when `child` exits or the time is up. */
async function listening(port: number, timeoutMs: number, child?: ChildProcess): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let exited: number | null | undefined;
  child?.once("exit", (code) => {
    exited = code;
  });
  while (Date.now() < deadline) {
    if (exited !== undefined) throw new Error(`rabbitmq-server exited with ${exited} before listening on ${port}`);
    const open = await new Promise<boolean>((resolve) => {
      const socket = connect(port, "127.0.0.1");
      socket.once("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (open) return;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`nothing listened on ${port} within ${timeoutMs} ms`);
}
