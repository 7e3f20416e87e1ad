import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { parsePrivateKey } from "../commands/keys.ts";
import { errorMessage } from "../core/errors.ts";
import { makeRelease, RELEASE_ZSTD_LEVEL } from "../ota/release.ts";
import { EXIT, type Host, UsageError } from "./host.ts";

export const RELEASE_HELP = `Usage: outpost release --binary FILE --key FILE --out DIR [--min-version V] [--allow-downgrade]
                       [--zstd-level N]
       outpost release --model FILE --version V --key FILE --out DIR [--zstd-level N]

Writes a signed release into DIR: the artifact, its chunk index (devices fetch only the chunks they do not
already have), chunks/ (what devices fetch over HTTP: each chunk compressed with zstd at --zstd-level, default
${RELEASE_ZSTD_LEVEL}, about 20 s for a full binary; 6 takes about a second and is 3 MiB larger; 0 writes none) and
manifest.json, signed with the ed25519 key (outpost keygen). An agent's version is read from the binary (npm
run build -- --set-version X stamps another) and its arch from the ELF header, so an arm64 release can be made
on any host. Devices trust release keys in update.trustedKeys.`;

export function releaseCommand(host: Host, args: string[]): number {
  const { values } = parseArgs({
    args,
    options: {
      binary: { type: "string" },
      model: { type: "string" },
      version: { type: "string" },
      key: { type: "string" },
      out: { type: "string" },
      "min-version": { type: "string" },
      "allow-downgrade": { type: "boolean" },
      "zstd-level": { type: "string" },
    },
    allowPositionals: false,
  });
  const file = values.binary ?? values.model;
  if (!file || (values.binary && values.model)) throw new UsageError("release: give --binary FILE or --model FILE");
  if (!values.key) throw new UsageError("release: missing --key FILE (the private key from outpost keygen)");
  if (!values.out) throw new UsageError("release: missing --out DIR");
  const level = values["zstd-level"] === undefined ? undefined : Number(values["zstd-level"]);
  if (level !== undefined && !(Number.isInteger(level) && level >= 0 && level <= 22)) {
    throw new UsageError(`release: --zstd-level ${values["zstd-level"]}: expected 0 (none) to 22`);
  }
  let privateKey: ReturnType<typeof parsePrivateKey>;
  try {
    privateKey = parsePrivateKey(readFileSync(values.key, "utf8"));
  } catch (err) {
    throw new UsageError(`release: --key ${values.key}: ${errorMessage(err)}`);
  }
  const release = makeRelease({
    file,
    privateKey,
    out: values.out,
    kind: values.binary ? "agent" : "model",
    ...(values.version ? { version: values.version } : {}),
    ...(values["min-version"] ? { minVersion: values["min-version"] } : {}),
    allowDowngrade: values["allow-downgrade"] === true,
    now: Date.now(),
    zstdLevel: level ?? RELEASE_ZSTD_LEVEL,
  });
  const m = release.manifest;
  const chunks = "chunks" in m.index ? m.index.chunks.length : `index ${m.index.sha256.slice(0, 12)}`;
  host.stdout.write(
    `${m.kind} ${m.version} linux-${m.target.arch}: ${m.size} bytes, sha256 ${m.sha256}, chunks ${chunks}\n` +
      release.files.map((f) => `  ${values.out}/${f}\n`).join(""),
  );
  return EXIT.OK;
}
