import { type ChildProcess, spawn } from "node:child_process";
import { type Ran, run } from "./run.ts";

/** Host names the namespace's /etc/hosts resolves to 127.0.0.1 (a broker reached by name, over TLS). */
export const TEST_HOSTS = ["broker.outpost.test"];

/**
 * A real systemd as PID 1 of a private PID and mount namespace (../shared/DESIGN.md, "systemd, for real").
 * Everything `install` writes lands in overlays and tmpfs made inside the namespace before systemd starts, so
 * the host's /etc (passwd, group, shadow), /opt, /usr/local and /var/lib are never touched; killing PID 1
 * from outside ends the namespace and all of it.
 */
export class Systemd {
  private readonly child: ChildProcess;
  readonly pid: number;

  private constructor(child: ChildProcess, pid: number) {
    this.child = child;
    this.pid = pid;
  }

  /** Where `share` appears inside the namespace. */
  static readonly SHARE = "/run/share";
  private share = "";

  /**
   * Boots systemd. `share` (the checkout) is bound at /run/share inside, and reached through `path()`: the
   * checkout may sit under /tmp, which inside is a fresh tmpfs (systemd's boot would empty the host's).
   */
  static async boot(share: string): Promise<Systemd> {
    const overlays = ["etc", "var/lib", "usr/local", "opt"]
      .map((d) => {
        const n = d.replace("/", "_");
        return `mkdir -p /run/ov/${n}/up /run/ov/${n}/work && mount -t overlay overlay -o lowerdir=/${d},upperdir=/run/ov/${n}/up,workdir=/run/ov/${n}/work /${d}`;
      })
      .join(" && ");
    const masked = ["systemd-binfmt.service", "systemd-sysctl.service", "systemd-modules-load.service"]
      .map((u) => `ln -s /dev/null /run/systemd/system/${u}`)
      .join(" && ");
    const script = [
      "set -e",
      "mount --make-rprivate /",
      "mount -t tmpfs tmpfs /run",
      `mkdir -p ${Systemd.SHARE} && mount --bind '${share}' ${Systemd.SHARE}`,
      overlays,
      "mount -t tmpfs tmpfs /tmp",
      "mount -t tmpfs tmpfs /var/tmp",
      // The journal too: the host's /var/log/journal would keep every test boot's lines (and show them again).
      "mkdir -p /var/log/journal && mount -t tmpfs tmpfs /var/log/journal",
      "mkdir -p /run/systemd/system",
      masked,
      `echo "127.0.0.1 ${TEST_HOSTS.join(" ")}" >> /etc/hosts`,
      // journal, not kmsg: /dev/kmsg is the host's kernel log.
      "exec /lib/systemd/systemd --system --unit=basic.target --log-target=journal --show-status=false",
    ].join("\n");
    const child = spawn("unshare", ["--pid", "--mount", "--fork", "--mount-proc", "sh", "-c", script], {
      stdio: ["ignore", "ignore", "pipe"],
      detached: true,
    });
    let stderr = "";
    child.stderr?.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    const unsharePid = child.pid;
    if (unsharePid === undefined) throw new Error("unshare did not start");
    // PID 1 of the namespace is unshare's only child.
    let pid: number | undefined;
    for (let i = 0; i < 200 && pid === undefined; i++) {
      const { stdout } = await run(["pgrep", "-P", String(unsharePid)]);
      const found = Number(stdout.trim().split("\n")[0]);
      if (found > 0) pid = found;
      else await new Promise((r) => setTimeout(r, 25));
    }
    if (pid === undefined) {
      child.kill("SIGKILL");
      throw new Error(`systemd did not start: ${stderr}`);
    }
    const systemd = new Systemd(child, pid);
    systemd.share = share;
    // Waits for the boot itself to finish (systemd's own answer); "offline" until its bus socket exists.
    let state = { stdout: "offline" };
    for (let i = 0; i < 400 && /offline|^$/.test(state.stdout.trim()); i++) {
      state = await systemd.sh("systemctl is-system-running --wait 2>/dev/null || true", 60_000);
      if (/offline|^$/.test(state.stdout.trim())) await new Promise((r) => setTimeout(r, 50));
    }
    if (!/running|degraded/.test(state.stdout)) {
      await systemd.shutdown();
      throw new Error(`systemd did not boot: ${state.stdout} ${stderr}`);
    }
    return systemd;
  }

  /** A host path under `share`, as seen inside the namespace. */
  path(hostPath: string): string {
    if (hostPath !== this.share && !hostPath.startsWith(`${this.share}/`)) throw new Error(`${hostPath} is not shared`);
    return Systemd.SHARE + hostPath.slice(this.share.length);
  }

  /** Runs a command inside the namespace; never throws on a non-zero exit (tests assert it). */
  exec(argv: string[], timeoutMs = 30_000): Promise<Ran> {
    return run(["nsenter", "-t", String(this.pid), "-m", "-p", "--", ...argv], { timeoutMs });
  }

  sh(script: string, timeoutMs?: number) {
    return this.exec(["sh", "-c", script], timeoutMs);
  }

  /** A unit property (`systemctl show -P`). */
  async show(unit: string, property: string): Promise<string> {
    return (await this.exec(["systemctl", "show", "-P", property, unit])).stdout.trim();
  }

  async journal(unit: string): Promise<string> {
    return (await this.exec(["journalctl", "-u", unit, "--no-pager", "-o", "cat"])).stdout;
  }

  async shutdown(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise<void>((r) => this.child.once("exit", () => r()));
    process.kill(this.pid, "SIGKILL");
    await exited;
  }
}
