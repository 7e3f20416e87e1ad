// What every sealed diagnostics verb of ctl shares (docs/diagnostics.md): a key pair of the run's own, the
// signed request, the chunks on the device's diag topic kept only when the signed answer names them, opened and
// decompressed within the size the answer declares.
import { createHash, createPublicKey, generateKeyPairSync, type KeyObject, randomUUID } from "node:crypto";
import { zstdDecompressSync } from "node:zlib";
import type { MqttClient } from "mqtt";
import { z } from "zod";
import { publicKeyText } from "../commands/keys.ts";
import { OutpostError } from "../core/errors.ts";
import { DIAG_CHUNK_BYTES } from "../diagnostics/module.ts";
import { open, rawPublicKey } from "../diagnostics/seal.ts";
import { deviceTopics } from "../mqtt/topics.ts";
import { isRefusal, printable, type Refusal } from "./answer-trust.ts";
import { DeviceCaller } from "./ctl-client.ts";
import { brokerOptions, ctlSettings, readPrivateKey } from "./ctl-settings.ts";
import { answerTrust, refusalPrinter, trustCode } from "./ctl-trust.ts";
import { EXIT, type Host, UsageError } from "./host.ts";

/**
 * The most an answer may hold once opened, by default: a log ring is 1 MiB, a minute's CPU profile a few. A heap
 * snapshot asks for more (`maxPlain`); nothing ever more than MAX_ANY.
 */
export const MAX_PLAIN = 16 * 1024 * 1024;
const MAX_ANY = 1024 * 1024 * 1024;
const MAX_CHUNKS = 16_384;
/** How long the chunks may come after the signed answer that names them. */
const CHUNKS_GRACE_MS = 5000;

/** The signed answer's account of the sealed chunks (checked before anything reads it); verbs extend it. */
export const sealedAnswer = z.looseObject({
  scheme: z.literal("x25519-hkdf-sha256-aes-256-gcm"),
  key: z.string(),
  encoding: z.literal("zstd"),
  size: z.number().int().min(0).max(MAX_ANY),
  chunks: z
    .array(z.strictObject({ size: z.number().int().min(1), sha256: z.string().regex(/^[0-9a-f]{64}$/) }))
    .min(1)
    .max(MAX_CHUNKS),
});

/** This run's own key pair: what the device seals to. It never leaves this process. */
function runKey(): { privateKey: KeyObject; to: string } {
  const mine = generateKeyPairSync("x25519");
  return { privateKey: mine.privateKey, to: rawPublicKey(mine.publicKey) };
}

/**
 * What every sealed verb of ctl sets up from its flags: the broker, the signing key (required), the pins that
 * check answers, this run's own key pair, and a reader for each connection.
 */
export function sealedSession(
  host: Host,
  values: Readonly<Record<string, unknown>>,
  o: { verb: string; device: string; timeoutMs: number },
) {
  const settings = ctlSettings(host, values);
  const keyFile = settings.key.value;
  if (keyFile === undefined) throw new UsageError(`ctl ${o.verb}: --key FILE is needed to sign the request`);
  const privateKey = readPrivateKey(keyFile);
  const signer = { privateKey, publicText: publicKeyText(createPublicKey(privateKey)) };
  const broker = brokerOptions(settings);
  const trust = answerTrust(host, settings, broker, values["accept-new"] === true);
  const refusal = refusalPrinter(host);
  const key = runKey();
  const reader = (client: MqttClient) =>
    SealedReader.open(client, {
      device: o.device,
      key,
      timeoutMs: o.timeoutMs,
      caller: new DeviceCaller(client, broker.prefix, signer, trust, broker.commandForm),
      refusal,
      prefix: broker.prefix,
    });
  return { broker, trust, reader };
}

export type Sealed<A> =
  | { ok: true; answer: A; plain: Buffer }
  | { ok: false; exit: number; code: string; message: string; verdicts: Refusal[] };

/** Says why a read failed; the exit code counts a forged or unverifiable answer as such. */
export function failed(host: Host, device: string, got: Sealed<unknown> & { ok: false }): number {
  host.stderr.write(`outpost: ${printable(device, 64)}: ${printable(got.code, 64)}: ${printable(got.message, 2000)}\n`);
  return got.verdicts.length > 0 ? trustCode(got.verdicts, false) : got.exit;
}

/**
 * Collects the chunks published for one request on the device's `P/D/diag`: anyone may publish there, so each
 * is kept only once a signed answer names its sha256.
 */
class ChunkCollector {
  private readonly seen = new Map<string, Buffer>();
  private bytes = 0;
  private wake: () => void = () => {};

  private readonly id: string;
  /** What one read keeps of what arrives on the diag topic before its answer says which chunks count. */
  private readonly most: number;

  constructor(id: string, maxPlain: number) {
    this.id = id;
    this.most = 2 * maxPlain;
  }

  take(payload: Buffer): void {
    const end = payload.indexOf(0x0a);
    // Anyone may publish on an open broker (the devices' ACL lets only the device): bounded, junk can make a
    // read fail, never take this process's memory.
    if (end < 0 || end > 200 || payload.length - end - 1 > DIAG_CHUNK_BYTES) return;
    if (this.bytes + payload.length > this.most) return;
    try {
      const header = JSON.parse(payload.subarray(0, end).toString("utf8")) as { id?: unknown };
      if (header.id !== this.id) return;
    } catch {
      return;
    }
    const body = payload.subarray(end + 1);
    this.seen.set(createHash("sha256").update(body).digest("hex"), Buffer.from(body));
    this.bytes += body.length;
    this.wake();
  }

  /** The chunks the answer names, in order, once all came; undefined when some did not within the grace. */
  async all(answer: { chunks: readonly { sha256: string }[] }, graceMs: number): Promise<Buffer[] | undefined> {
    const deadline = Date.now() + graceMs;
    for (;;) {
      const got = answer.chunks.map((c) => this.seen.get(c.sha256));
      if (got.every((c) => c !== undefined)) return got as Buffer[];
      const left = deadline - Date.now();
      if (left <= 0) return undefined;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }
}

export interface ReaderOptions {
  device: string;
  key: { privateKey: KeyObject; to: string };
  timeoutMs: number;
  caller: DeviceCaller;
  refusal: (device: string, verdict: Refusal) => void;
}

/** One connection's reader: a request at a time, its chunks collected on the device's diag topic. */
export class SealedReader {
  private current: ChunkCollector | undefined;
  private readonly o: ReaderOptions;

  private constructor(o: ReaderOptions) {
    this.o = o;
  }

  static async open(client: MqttClient, o: ReaderOptions & { prefix: string }): Promise<SealedReader> {
    const reader = new SealedReader(o);
    const diag = deviceTopics(o.prefix, o.device).diag;
    client.on("message", (topic, payload) => {
      if (topic === diag) reader.current?.take(payload);
    });
    await client.subscribeAsync(diag, { qos: 1 });
    return reader;
  }

  /** Sends `command` with `params` (and `to`), and opens what the verified answer names. */
  async read<S extends typeof sealedAnswer>(
    command: string,
    params: Record<string, unknown>,
    schema: S,
    maxPlain = MAX_PLAIN,
  ): Promise<Sealed<z.infer<S>>> {
    const id = randomUUID();
    const collector = new ChunkCollector(id, maxPlain);
    this.current = collector;
    const result = await this.o.caller.call({
      id,
      command,
      params: { to: this.o.key.to, ...params },
      device: this.o.device,
      timeoutMs: this.o.timeoutMs,
      validityMs: Math.max(60_000, this.o.timeoutMs),
      onReply: (reply, verdict) => {
        if (isRefusal(verdict)) this.o.refusal(reply.device, verdict);
      },
    });
    const reply = result.finals[0];
    const verdicts = result.refused.map((r) => r.verdict);
    if (!reply) {
      const what = verdicts.length > 0 ? "no verified reply" : "no reply";
      const message = `${what} within ${this.o.timeoutMs}ms`;
      return { ok: false, exit: EXIT.FAILURE, code: "TIMEOUT", message, verdicts };
    }
    if (reply.state !== "succeeded") {
      const code = reply.error?.code ?? "FAILED";
      return { ok: false, exit: EXIT.FAILURE, code, message: reply.error?.message ?? "", verdicts: [] };
    }
    const answer = schema.safeParse(reply.result);
    if (!answer.success) throw new OutpostError("DIAG_INVALID", "the signed answer does not describe sealed chunks");
    if (answer.data.size > maxPlain) {
      throw new OutpostError(
        "DIAG_INVALID",
        `the answer declares ${answer.data.size} bytes; at most ${maxPlain} taken`,
      );
    }
    const chunks = await collector.all(answer.data, CHUNKS_GRACE_MS);
    if (!chunks) throw new OutpostError("DIAG_INVALID", "the chunks the signed answer names did not all come");
    const packed = open(chunks, this.o.key, answer.data.key, { device: this.o.device, request: id });
    const plain = zstdDecompressSync(packed, { maxOutputLength: Math.max(1, answer.data.size) });
    if (plain.length !== answer.data.size) {
      throw new OutpostError("DIAG_INVALID", "what was opened is not the size the answer says");
    }
    return { ok: true, answer: answer.data as z.infer<S>, plain };
  }
}
