// `outpost ctl logs DEVICE`: the device's recent log lines, sealed to this run's own key (docs/diagnostics.md).
import { createHash, createPublicKey, generateKeyPairSync, type KeyObject, randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import { zstdDecompressSync } from "node:zlib";
import type { MqttClient } from "mqtt";
import { z } from "zod";
import { publicKeyText } from "../commands/keys.ts";
import { errorMessage, OutpostError } from "../core/errors.ts";
import { LOG_LEVELS } from "../core/logger.ts";
import { DIAG_CHUNK_BYTES } from "../diagnostics/module.ts";
import { open, rawPublicKey } from "../diagnostics/seal.ts";
import { deviceTopics } from "../mqtt/topics.ts";
import { isRefusal, printable, type Refusal } from "./answer-trust.ts";
import { DeviceCaller, withClient } from "./ctl-client.ts";
import { BROKER_FLAGS, brokerOptions, ctlSettings, durationFlag, readPrivateKey } from "./ctl-settings.ts";
import { answerTrust, refusalPrinter, trustCode } from "./ctl-trust.ts";
import { EXIT, type Host, UsageError } from "./host.ts";

/** The most a logs answer may hold once opened: the device's ring is 1 MiB; this leaves room, no more. */
const MAX_PLAIN = 16 * 1024 * 1024;
const MAX_CHUNKS = 1024;
/** What one read keeps of what arrives on the diag topic before its answer says which chunks count. */
const MAX_COLLECTED = 2 * MAX_PLAIN;
/** How long the chunks may come after the signed answer that names them. */
const CHUNKS_GRACE_MS = 5000;

/** The signed answer's account of the sealed chunks (checked before anything reads it). */
const sealedAnswer = z.looseObject({
  scheme: z.literal("x25519-hkdf-sha256-aes-256-gcm"),
  key: z.string(),
  encoding: z.literal("zstd"),
  size: z.number().int().min(0).max(MAX_PLAIN),
  chunks: z
    .array(z.strictObject({ size: z.number().int().min(1), sha256: z.string().regex(/^[0-9a-f]{64}$/) }))
    .min(1)
    .max(MAX_CHUNKS),
  lines: z.number().int().min(0),
  dropped: z.number().int().min(0),
  missed: z.number().int().min(0),
  upTo: z.number().int().min(0),
  session: z.string().max(64),
  ended: z.record(z.string(), z.unknown()).optional(),
});
type SealedAnswer = z.infer<typeof sealedAnswer>;

/**
 * Collects the chunks published for one request on the device's `P/D/diag`: anyone may publish there, so each
 * is kept only once a signed answer names its sha256.
 */
class ChunkCollector {
  private readonly seen = new Map<string, Buffer>();
  private bytes = 0;
  private wake: () => void = () => {};

  private readonly id: string;

  constructor(id: string) {
    this.id = id;
  }

  take(payload: Buffer): void {
    const end = payload.indexOf(0x0a);
    // Anyone may publish on an open broker (the devices' ACL lets only the device): bounded, junk can make a
    // read fail, never take this process's memory.
    if (end < 0 || end > 200 || payload.length - end - 1 > DIAG_CHUNK_BYTES) return;
    if (this.bytes + payload.length > MAX_COLLECTED) return;
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
  async all(answer: SealedAnswer, graceMs: number): Promise<Buffer[] | undefined> {
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

/** One line as a person reads it: time, level, component, message, then the other fields. */
export function prettyLine(text: string): string {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(text) as Record<string, unknown>;
  } catch {
    return printable(text, 4000);
  }
  const { seq: _seq, time, level, component, msg, ...rest } = o;
  const clock = typeof time === "string" ? time.replace("T", " ").replace("Z", "") : "";
  const extra = Object.keys(rest).length > 0 ? ` ${JSON.stringify(rest)}` : "";
  const parts = [
    clock,
    String(level ?? "")
      .toUpperCase()
      .padEnd(5),
    component ? `[${String(component)}]` : "",
  ];
  return printable(`${parts.filter(Boolean).join(" ")} ${String(msg ?? "")}${extra}`, 4000);
}

export async function logsCommand(host: Host, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      ...BROKER_FLAGS,
      key: { type: "string" },
      since: { type: "string" },
      level: { type: "string" },
      component: { type: "string" },
      limit: { type: "string" },
      timeout: { type: "string" },
      "accept-new": { type: "boolean" },
      follow: { type: "boolean" },
      previous: { type: "boolean" },
    },
    allowPositionals: true,
  });
  const [device, ...extra] = positionals;
  if (device === undefined || extra.length > 0) throw new UsageError("ctl logs: expected DEVICE");
  const sinceMs = values.since === undefined ? undefined : durationFlag("since", values.since, 0);
  const level = values.level;
  if (level !== undefined && (level === "silent" || !(LOG_LEVELS as readonly string[]).includes(level))) {
    throw new UsageError(`--level ${level}: expected one of ${LOG_LEVELS.filter((l) => l !== "silent").join(", ")}`);
  }
  const limit = values.limit === undefined ? undefined : Number(values.limit);
  if (limit !== undefined && !(Number.isInteger(limit) && limit > 0)) {
    throw new UsageError("--limit must be a positive integer");
  }
  const timeoutMs = durationFlag("timeout", values.timeout, 10_000);
  const settings = ctlSettings(host, values);
  if (settings.key.value === undefined) throw new UsageError("ctl logs: --key FILE is needed to sign the request");
  const privateKey = readPrivateKey(settings.key.value);
  const signer = { privateKey, publicText: publicKeyText(createPublicKey(privateKey)) };
  const o = brokerOptions(settings);
  const trust = answerTrust(host, settings, o, values["accept-new"] === true);
  const refusal = refusalPrinter(host);
  // This run's own key: what the device seals to. It never leaves this process.
  const mine = generateKeyPairSync("x25519");
  const key = { privateKey: mine.privateKey, to: rawPublicKey(mine.publicKey) };
  const filters = {
    ...(level === undefined ? {} : { level }),
    ...(values.component === undefined ? {} : { component: values.component }),
  };
  if (values.previous && values.follow)
    throw new UsageError("ctl logs: --previous shows a run that ended: no --follow");
  const first = {
    ...(values.previous ? { previous: true } : {}),
    ...filters,
    ...(sinceMs === undefined ? {} : { sinceMs }),
    ...(limit === undefined ? {} : { limit }),
  };
  const print = (got: Got & { ok: true }) => {
    if (got.answer.missed > 0) {
      host.stderr.write(`outpost: ${got.answer.missed} lines were lost before these: the device's ring let them go\n`);
    }
    for (const line of got.lines) host.stdout.write(`${values.json ? line : prettyLine(line)}\n`);
  };
  const reader = (client: MqttClient) =>
    LogReader.open(client, {
      device,
      key,
      timeoutMs,
      caller: new DeviceCaller(client, o.prefix, signer, trust, o.commandForm),
      refusal,
      prefix: o.prefix,
    });
  if (!values.follow) {
    const got = await withClient(o, async (client) => (await reader(client)).read(first));
    if (!got.ok) return failed(host, device, got);
    print(got);
    if (got.answer.ended) host.stderr.write(`outpost: ${endingText(got.answer.ended)}\n`);
    if (got.answer.dropped > 0 && !values.json) {
      host.stderr.write(
        `outpost: the device's log ring has let go of ${got.answer.dropped} older lines since it started\n`,
      );
    }
    return EXIT.OK;
  }
  return follow(host, { o, reader, first, filters, print, device });
}

/** How the run before ended, in a line: systemd's word when its ExecStopPost= kept one, else the log's. */
export function endingText(ended: Record<string, unknown>): string {
  const word = (k: string) => printable(String(ended[k] ?? "?"), 40);
  if (ended.by === "systemd") {
    return `the run before ended: systemd says ${word("result")} (${word("code")}, ${word("status")}) at ${word("at")}; its log's last line: ${word("lastLine")}`;
  }
  return `the run before: ${printable(String(ended.note ?? "no record of how it ended"), 200)}`;
}

type Got =
  | { ok: true; answer: SealedAnswer; lines: string[] }
  | { ok: false; exit: number; code: string; message: string; verdicts: Refusal[] };

function failed(host: Host, device: string, got: Got & { ok: false }): number {
  host.stderr.write(`outpost: ${printable(device, 64)}: ${printable(got.code, 64)}: ${printable(got.message, 2000)}\n`);
  return got.verdicts.length > 0 ? trustCode(got.verdicts, false) : got.exit;
}

/** How often a follow asks for the lines after the last it saw; each request renews it. */
const FOLLOW_EVERY_MS = 2000;

/**
 * `--follow`: asks for the lines after the last one seen, every 2 s, until Ctrl-C. A lost broker or a device that
 * does not answer is said once and tried again; the lines written meanwhile come when it answers again, and a
 * gap (the ring let lines go before they were read) is said, never silent.
 */
async function follow(
  host: Host,
  f: {
    o: ReturnType<typeof brokerOptions>;
    reader: (client: MqttClient) => Promise<LogReader>;
    first: Record<string, unknown>;
    filters: Record<string, unknown>;
    print: (got: Got & { ok: true }) => void;
    device: string;
  },
): Promise<number> {
  let stopped = false;
  void host.stopRequested.then(() => {
    stopped = true;
  });
  const pause = (ms: number) => Promise.race([new Promise((r) => setTimeout(r, ms).unref()), host.stopRequested]);
  let after: number | undefined;
  let session: string | undefined;
  let trouble = "";
  const say = (what: string) => {
    if (what !== trouble) host.stderr.write(`outpost: ${what}\n`);
    trouble = what;
  };
  while (!stopped) {
    try {
      await withClient(f.o, async (client) => {
        const reader = await f.reader(client);
        while (!stopped && client.connected) {
          const got = await reader.read(after === undefined ? f.first : { ...f.filters, after });
          if (got.ok) {
            if (trouble !== "") say("answering again");
            trouble = "";
            if (session !== undefined && got.answer.session !== session) {
              // Another process: its lines are numbered from 1 again. What the one before wrote after the last
              // line read here is in its tail, not in this ring.
              host.stderr.write(
                `outpost: ${f.device} restarted; its lines from the start (the run before's last lines: --previous)\n`,
              );
              session = got.answer.session;
              after = 0;
              continue;
            }
            session = got.answer.session;
            f.print(got);
            after = got.answer.upTo;
          } else if (got.verdicts.some((v) => v.trust === "forged")) {
            throw Object.assign(new Error(got.message), { exit: trustCode(got.verdicts, false) });
          } else {
            say(`${f.device}: ${got.code}: ${got.message}; asking again`);
          }
          await pause(FOLLOW_EVERY_MS);
        }
      });
    } catch (err) {
      const exit = (err as { exit?: number }).exit;
      if (exit !== undefined) {
        host.stderr.write(`outpost: ${f.device}: ${errorMessage(err)}\n`);
        return exit;
      }
      say(`the broker connection is lost (${errorMessage(err)}); trying again`);
    }
    if (!stopped) await pause(FOLLOW_EVERY_MS);
  }
  return EXIT.OK;
}

interface ReaderOptions {
  device: string;
  key: { privateKey: KeyObject; to: string };
  timeoutMs: number;
  caller: DeviceCaller;
  refusal: (device: string, verdict: Refusal) => void;
}

/** One connection's reader: a request at a time, its chunks collected on the device's diag topic. */
class LogReader {
  private current: ChunkCollector | undefined;
  private readonly o: ReaderOptions;

  private constructor(o: ReaderOptions) {
    this.o = o;
  }

  static async open(client: MqttClient, o: ReaderOptions & { prefix: string }): Promise<LogReader> {
    const reader = new LogReader(o);
    const diag = deviceTopics(o.prefix, o.device).diag;
    client.on("message", (topic, payload) => {
      if (topic === diag) reader.current?.take(payload);
    });
    await client.subscribeAsync(diag, { qos: 1 });
    return reader;
  }

  async read(params: Record<string, unknown>): Promise<Got> {
    const id = randomUUID();
    const collector = new ChunkCollector(id);
    this.current = collector;
    const result = await this.o.caller.call({
      id,
      command: "debug.logs",
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
      return {
        ok: false,
        exit: EXIT.FAILURE,
        code: "TIMEOUT",
        message: `${what} within ${this.o.timeoutMs}ms`,
        verdicts,
      };
    }
    if (reply.state !== "succeeded") {
      const code = reply.error?.code ?? "FAILED";
      return { ok: false, exit: EXIT.FAILURE, code, message: reply.error?.message ?? "", verdicts: [] };
    }
    const answer = sealedAnswer.safeParse(reply.result);
    if (!answer.success) throw new OutpostError("DIAG_INVALID", "the signed answer does not describe sealed chunks");
    const chunks = await collector.all(answer.data, CHUNKS_GRACE_MS);
    if (!chunks) throw new OutpostError("DIAG_INVALID", "the chunks the signed answer names did not all come");
    const packed = open(chunks, this.o.key, answer.data.key, { device: this.o.device, request: id });
    const plain = zstdDecompressSync(packed, { maxOutputLength: Math.max(1, answer.data.size) });
    if (plain.length !== answer.data.size) {
      throw new OutpostError("DIAG_INVALID", "the logs are not the size the answer says");
    }
    return { ok: true, answer: answer.data, lines: plain.toString("utf8").split("\n").filter(Boolean) };
  }
}
