// The operator's pins of device keys: `~/.outpost/known_devices`, like ssh's known_hosts. Plain text, one line
// a device, so that several operators can share one file (in a repository, say) and read its diffs.
import { realpathSync } from "node:fs";
import { parsePublicKey, publicKeyText } from "../commands/keys.ts";
import { errorMessage } from "../core/errors.ts";
import { writeFileAtomically } from "../core/files.ts";
import { readBoundedText } from "./ctl-settings.ts";
import { UsageError } from "./host.ts";

/** One pin: a device's public key, for one broker and topic prefix. */
export interface Pin {
  /** `host:port` (brokerId), or `*` for any broker. */
  broker: string;
  prefix: string;
  device: string;
  /** `ed25519:<base64>`, as the device's status and device.pub carry it. */
  key: string;
  /** What follows `#` on the line: who pinned it, when, from what. */
  note?: string;
}

/** A pin file of a fleet of ten thousand devices is about 1.2 MiB; a cap keeps a wrong path harmless. */
const MAX_FILE = 16 * 1024 * 1024;
const FIELD = /^[^\s#]+$/;
const HEADER =
  "# outpost known devices: BROKER PREFIX DEVICE KEY  # note\n" +
  "# Written by outpost ctl trust / forget / --accept-new and scripts/deploy.sh; BROKER * matches any broker.\n";

/**
 * The broker a pin belongs to: `host:port` of its URL, the scheme's port when none is given. The same fleet
 * reached by another name is another broker, as a host is in known_hosts; `*` in the file matches any.
 */
export function brokerId(url: string): string {
  try {
    const u = new URL(url);
    const port = u.port || (u.protocol === "mqtts:" ? "8883" : "1883");
    const host = u.hostname.toLowerCase();
    return `${host.includes(":") && !host.startsWith("[") ? `[${host}]` : host}:${port}`;
  } catch {
    return url;
  }
}

/**
 * The brokers of a list (`--broker a,b`: the nodes of one cluster), each as a pin names it: a pin made through
 * any of them holds for the list, whichever comes first.
 */
export function brokerIds(url: string, failover: readonly string[] = []): string[] {
  return [...new Set([url, ...failover].map(brokerId))];
}

export class KnownDevices {
  readonly path: string;
  /** The file's lines in order: pins, and the comments a person wrote between them, kept where they were. */
  private lines: (Pin | string)[];

  private constructor(path: string, lines: (Pin | string)[]) {
    this.path = path;
    this.lines = lines;
  }

  /** The file, for messages. */
  get where(): string {
    return this.path === "" ? "(no pin file: no home directory)" : this.path;
  }

  private get pins(): Pin[] {
    return this.lines.filter((l): l is Pin => typeof l !== "string");
  }

  /** No file at all (no home directory): no pins, and none can be saved. */
  static none(): KnownDevices {
    return new KnownDevices("", []);
  }

  /** Reads the file; a missing one holds no pins. A line that is not a pin names its number. */
  static load(path: string): KnownDevices {
    const text = readBoundedText(path, MAX_FILE, false, "a pin file");
    const lines: (Pin | string)[] = [];
    for (const [i, raw] of (text ?? "").split("\n").entries()) {
      const line = raw.trim();
      if (line === "") continue;
      if (line.startsWith("#")) {
        if (!HEADER.includes(line)) lines.push(line);
        continue;
      }
      const hash = line.indexOf("#");
      const fields = (hash < 0 ? line : line.slice(0, hash)).trim().split(/\s+/);
      const [broker, prefix, device, key, ...extra] = fields;
      if (broker === undefined || prefix === undefined || device === undefined || key === undefined || extra.length) {
        throw new UsageError(`${path}:${i + 1}: expected BROKER PREFIX DEVICE KEY, found ${line.slice(0, 80)}`);
      }
      try {
        parsePublicKey(key);
      } catch (err) {
        throw new UsageError(`${path}:${i + 1}: ${device}: ${errorMessage(err)}`);
      }
      const note = hash < 0 ? undefined : line.slice(hash + 1).trim() || undefined;
      lines.push({ broker, prefix, device, key, ...(note ? { note } : {}) });
    }
    return new KnownDevices(path, lines);
  }

  /** The pin for a device on this broker, or the first of a list that has one (an exact broker before `*`). */
  find(broker: string | readonly string[], prefix: string, device: string): Pin | undefined {
    const mine = this.pins.filter((p) => p.prefix === prefix && p.device === device);
    const brokers = typeof broker === "string" ? [broker] : broker;
    for (const b of brokers) {
      const pin = mine.find((p) => p.broker === b);
      if (pin) return pin;
    }
    return mine.find((p) => p.broker === "*");
  }

  /** Adds a pin, or replaces the one for the same broker, prefix and device. Saved by `save`. */
  pin(p: Pin): void {
    for (const [name, value] of Object.entries({ broker: p.broker, prefix: p.prefix, device: p.device })) {
      if (!FIELD.test(value)) throw new UsageError(`a pin's ${name} cannot hold spaces or #: ${JSON.stringify(value)}`);
    }
    // Kept in one form only, `ed25519:` and 44 characters, whatever form it came in (a PEM block, spaces).
    const key = publicKeyText(parsePublicKey(p.key));
    // biome-ignore lint/suspicious/noControlCharactersInRegex: a note is one line of plain text
    const note = p.note?.replace(/[\u0000-\u001f\u007f]+/g, " ");
    const pin = { ...p, key, ...(note ? { note } : {}) };
    const at = this.lines.findIndex(
      (q) => typeof q !== "string" && q.broker === p.broker && q.prefix === p.prefix && q.device === p.device,
    );
    if (at < 0) this.lines.push(pin);
    else this.lines[at] = pin;
  }

  /** Removes the device's pins for this broker (and a `*` one); returns how many. */
  forget(broker: string, prefix: string, device: string): number {
    const before = this.lines.length;
    this.lines = this.lines.filter(
      (p) =>
        typeof p === "string" ||
        !(p.prefix === prefix && p.device === device && (p.broker === broker || p.broker === "*")),
    );
    return before - this.lines.length;
  }

  all(): readonly Pin[] {
    return this.pins;
  }

  /**
   * Writes the file atomically (a crash leaves the old pins or the new). A file that is a link (a shared copy
   * in a repository) is written where the link points, and stays a link. Mode 0644: it holds public keys only.
   */
  save(): void {
    if (this.path === "") {
      throw new UsageError("no home directory for ~/.outpost/known_devices: give --known-devices FILE");
    }
    let target = this.path;
    try {
      target = realpathSync(this.path);
    } catch {
      // Not there yet: written at its own path.
    }
    const text = this.lines.map((p) =>
      typeof p === "string"
        ? p
        : `${p.broker} ${p.prefix} ${p.device} ${p.key}${p.note === undefined ? "" : `  # ${p.note}`}`,
    );
    writeFileAtomically(target, `${HEADER}${text.join("\n")}\n`, 0o644);
  }
}
