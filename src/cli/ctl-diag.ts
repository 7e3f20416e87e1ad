import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { z } from "zod";
import { fingerprintOf } from "../commands/keys.ts";
import { printable } from "./answer-trust.ts";
import { withClient } from "./ctl-client.ts";
import { failed, sealedAnswer, sealedSession } from "./ctl-sealed.ts";
import { BROKER_FLAGS, durationFlag } from "./ctl-settings.ts";
import { EXIT, type Host, UsageError } from "./host.ts";
import { tarGz } from "./tar.ts";

/** The bundle as the device sends it (debug.bundle); each part becomes a file of the archive. */
const bundle = z.object({
  format: z.literal("outpost-diag-v1"),
  at: z.iso.datetime(),
  describe: z.record(z.string(), z.unknown()),
  config: z.unknown(),
  metrics: z.string(),
  logs: z.array(z.string()),
  previous: z.object({ lines: z.array(z.string()), ended: z.unknown() }),
  // The device names its files, but only these become names in the archive: nothing it sends picks a path.
  files: z
    .record(z.string(), z.string().nullable())
    .transform((f) => Object.fromEntries(KNOWN_FILES.map((name) => [name, f[name] ?? null]))),
});

/** The state directory's files the bundle carries (diagnostics/module.ts BUNDLE_FILES). */
const KNOWN_FILES = ["update/journal.json", "runs.json"];

const json = (v: unknown) => `${JSON.stringify(v, null, 2)}\n`;
const lines = (l: readonly string[]) => (l.length > 0 ? `${l.join("\n")}\n` : "");

export async function diagCommand(host: Host, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      ...BROKER_FLAGS,
      key: { type: "string" },
      out: { type: "string" },
      timeout: { type: "string" },
      "accept-new": { type: "boolean" },
    },
    allowPositionals: true,
  });
  const [device, ...extra] = positionals;
  if (device === undefined || extra.length > 0) throw new UsageError("ctl diag: expected DEVICE");
  const timeoutMs = durationFlag("timeout", values.timeout, 30_000);
  const { broker, trust, reader } = sealedSession(host, values, { verb: "diag", device, timeoutMs });
  const got = await withClient(broker, async (client) => (await reader(client)).read("debug.bundle", {}, sealedAnswer));
  if (!got.ok) return failed(host, device, got);
  const parsed = bundle.safeParse(JSON.parse(got.plain.toString("utf8")));
  if (!parsed.success) throw new UsageError("ctl diag: the device's bundle is not one this ctl reads (a newer agent?)");
  const b = parsed.data;
  const pin = trust.pinOf(device);
  const readme = [
    `Outpost diagnostics of ${printable(device, 128)}, taken ${b.at} by outpost ctl diag.`,
    `Signed by the device's pinned key ${pin ? fingerprintOf(pin.key) : "(unknown)"}; sealed to this ctl run's own key.`,
    "",
    "describe.json        the device's describe: versions, board, health, alarms, each module's state",
    "config.json          the effective configuration, secrets redacted",
    "metrics.txt          a /metrics snapshot (Prometheus text)",
    "logs.jsonl           the agent's recent log lines (its ring), oldest first",
    "previous.jsonl       the last lines of the run before this one",
    "previous-ended.json  how the run before ended (systemd's word, or its last line's)",
    ...Object.keys(b.files).map((f) => `${`files/${f}`.padEnd(20)} the state directory's ${f}, raw`),
    "",
  ].join("\n");
  const files = [
    { name: "README.txt", data: readme },
    { name: "describe.json", data: json(b.describe) },
    { name: "config.json", data: json(b.config) },
    { name: "metrics.txt", data: b.metrics },
    { name: "logs.jsonl", data: lines(b.logs) },
    { name: "previous.jsonl", data: lines(b.previous.lines) },
    { name: "previous-ended.json", data: json(b.previous.ended) },
    ...Object.entries(b.files).map(([f, text]) => ({ name: `files/${f}`, data: text ?? "" })),
  ];
  const stamp = b.at.replace(/[:.]/g, "-");
  const file = values.out ?? `${device}-diag-${stamp}.tar.gz`;
  const archive = tarGz(files, Date.parse(b.at) || Date.now());
  // Configuration, logs and state: for the operator's eyes only.
  writeFileSync(file, archive, { mode: 0o600 });
  host.stdout.write(
    `${file}: ${files.length} files, ${archive.length} bytes (${got.plain.length} before compression)\n`,
  );
  return EXIT.OK;
}
