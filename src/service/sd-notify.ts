import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { writeFileAtomically } from "../core/files.ts";
import type { Logger } from "../core/logger.ts";

/**
 * The sd_notify addon for each architecture, base64, put in by the build (build/native.ts). Absent when the
 * agent runs from source: then `systemd-notify` is spawned instead.
 */
declare const __OUTPOST_SD_NOTIFY__: Record<string, string> | undefined;

interface Addon {
  notify(socket: string, message: string): number;
}

export type NotifyMechanism = "addon" | "systemd-notify" | "none";

/**
 * Sends sd_notify(3) messages to systemd. The datagram goes out from this process through a tiny addon
 * (build/native/sd-notify.c), so systemd always knows which unit sent it; spawning `systemd-notify` is the
 * fallback, and loses messages on systemd before 246 (the helper may exit before systemd reads them).
 */
export class Notifier {
  readonly mechanism: NotifyMechanism;
  private readonly addon: Addon | undefined;
  private failures = 0;
  private readonly socket: string | undefined;
  private readonly o: { stateDir: string; logger: Logger };

  constructor(socket: string | undefined, o: { stateDir: string; logger: Logger }) {
    this.socket = socket;
    this.o = o;
    this.addon = socket === undefined ? undefined : loadAddon(o.stateDir, o.logger);
    this.mechanism = socket === undefined ? "none" : this.addon ? "addon" : "systemd-notify";
  }

  get enabled(): boolean {
    return this.mechanism !== "none";
  }

  /** Sends `KEY=value` lines in one datagram; never throws (a lost ping is systemd's to judge). */
  send(fields: Record<string, string>): void {
    const socket = this.socket;
    if (socket === undefined) return;
    // A newline inside a value would start a new assignment: STATUS text comes from our own data, but be sure.
    const lines = Object.entries(fields).map(([k, v]) => `${k}=${v.replace(/\n/g, " ")}`);
    if (this.addon) {
      const rc = this.addon.notify(socket, lines.join("\n"));
      if (rc !== 0) this.failed(`errno ${-rc}`);
      return;
    }
    execFile("systemd-notify", lines, { timeout: 5000 }, (err) => {
      if (err) this.failed(err.message);
    });
  }

  private failed(reason: string): void {
    this.failures += 1;
    // Once, then every 100th: a missing socket would otherwise log at every ping.
    if (this.failures === 1 || this.failures % 100 === 0) {
      this.o.logger.warn({ reason, failures: this.failures }, "sd_notify message not sent");
    }
  }
}

/** Writes the addon for this architecture into state.dir (named by its hash) and loads it. */
function loadAddon(stateDir: string, logger: Logger): Addon | undefined {
  const encoded = typeof __OUTPOST_SD_NOTIFY__ === "undefined" ? undefined : __OUTPOST_SD_NOTIFY__[process.arch];
  if (encoded === undefined) return undefined;
  try {
    const bytes = Buffer.from(encoded, "base64");
    const dir = join(stateDir, "native");
    const file = join(dir, `sd-notify-${createHash("sha256").update(bytes).digest("hex").slice(0, 12)}.node`);
    if (!existsSync(file) || !readFileSync(file).equals(bytes)) {
      mkdirSync(dir, { recursive: true, mode: 0o750 });
      writeFileAtomically(file, bytes, 0o640);
    }
    const module = { exports: {} as Addon };
    process.dlopen(module, file);
    return module.exports;
  } catch (err) {
    logger.warn({ err }, "sd_notify addon not loaded; using systemd-notify");
    return undefined;
  }
}
