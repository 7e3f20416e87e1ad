import { existsSync, mkdirSync } from "node:fs";
import { basename, dirname } from "node:path";
import { parseArgs } from "node:util";
import { generateKeys } from "../commands/keys.ts";
import { writeFileAtomically } from "../core/files.ts";
import { EXIT, type Host, me, UsageError } from "./host.ts";

export const KEYGEN_HELP = `Usage: outpost keygen --out PREFIX [--release] [--force]

Writes an ed25519 key pair: PREFIX.key (private, mode 0600; keep it with the operator) and PREFIX.pub
(one line, "ed25519:<base64>") and prints the config lines that make a device trust it:
  an operator key (signs commands): commands.trustedKeys[] as { name, key, allow }
  --release (signs releases for 'outpost release'): update.trustedKeys[], the key alone
Keep the two apart: a release key needs no command right, and an operator key cannot sign a release.`;

export function keygenCommand(host: Host, args: string[]): number {
  const { values } = parseArgs({
    args,
    options: { out: { type: "string" }, force: { type: "boolean" }, release: { type: "boolean" } },
    allowPositionals: false,
  });
  if (!values.out) throw new UsageError("keygen: missing --out PREFIX");
  const files = [`${values.out}.key`, `${values.out}.pub`];
  const existing = files.filter((f) => existsSync(f));
  if (existing.length > 0 && !values.force) {
    throw new UsageError(`keygen: ${existing.join(" and ")} exist (--force overwrites)`);
  }
  const keys = generateKeys();
  // ~/.outpost on a fresh machine: the README's first step must not fail on a missing directory.
  mkdirSync(dirname(values.out), { recursive: true, mode: 0o700 });
  // A new file created with the mode, renamed over the old one: an existing file would keep its own mode.
  writeFileAtomically(files[0] ?? "", keys.privatePem, 0o600);
  writeFileAtomically(files[1] ?? "", `${keys.publicText}\n`, 0o644);
  host.stdout.write(`${files[0]} (private, keep it secret)\n${files[1]}: ${keys.publicText}\n`);
  if (values.release) {
    host.stdout.write(
      `trust it for releases on a device (/etc/outpost/config.yaml):\n  update:\n    trustedKeys:\n      - "${keys.publicText}"\n`,
    );
    return EXIT.OK;
  }
  // The name a device logs and replies with: the file's own name when it is a valid key name.
  const name = /^[A-Za-z0-9._-]{1,64}$/.test(basename(values.out)) ? basename(values.out) : "ops";
  host.stdout.write(
    `trust it for commands on a device (/etc/outpost/config.yaml):\n  commands:\n    trustedKeys:\n      - { name: ${name}, key: "${keys.publicText}", allow: ["*"] }\n` +
      `a release key (for 'outpost release') is made with '${me(host)} keygen --release' and goes in update.trustedKeys\n`,
  );
  return EXIT.OK;
}
