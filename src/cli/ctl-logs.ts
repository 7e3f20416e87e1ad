import { parseArgs } from "node:util";
import type { MqttClient } from "mqtt";
import { z } from "zod";
import { errorMessage } from "../core/errors.ts";
import { LOG_LEVELS } from "../core/logger.ts";
import { printable } from "./answer-trust.ts";
import { withClient } from "./ctl-client.ts";
import { failed, type Sealed, type SealedReader, sealedAnswer, sealedSession } from "./ctl-sealed.ts";
import { BROKER_FLAGS, type brokerOptions, durationFlag } from "./ctl-settings.ts";
import { trustCode } from "./ctl-trust.ts";
import { EXIT, type Host, UsageError } from "./host.ts";

/** A logs answer: the sealed chunks, and where the lines stand in the ring. */
const logsAnswer = sealedAnswer.extend({
  lines: z.number().int().min(0),
  dropped: z.number().int().min(0),
  missed: z.number().int().min(0),
  upTo: z.number().int().min(0),
  session: z.string().max(64),
  ended: z.record(z.string(), z.unknown()).optional(),
});
type LogsAnswer = z.infer<typeof logsAnswer>;

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
  // One key pair for the whole run, a follow's every request included (sealedSession).
  const { broker: o, reader } = sealedSession(host, values, { verb: "logs", device, timeoutMs });
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
    for (const line of got.lines ?? []) host.stdout.write(`${values.json ? line : prettyLine(line)}\n`);
  };
  if (!values.follow) {
    const got = await withClient(o, async (client) => readLines(await reader(client), first));
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

type Got = Sealed<LogsAnswer> & { lines?: string[] };

/** One read of the device's lines. */
async function readLines(reader: SealedReader, params: Record<string, unknown>): Promise<Got> {
  const got = await reader.read("debug.logs", params, logsAnswer);
  return got.ok ? { ...got, lines: got.plain.toString("utf8").split("\n").filter(Boolean) } : got;
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
    reader: (client: MqttClient) => Promise<SealedReader>;
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
          const got = await readLines(reader, after === undefined ? f.first : { ...f.filters, after });
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
