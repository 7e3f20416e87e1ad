// `outpost ctl call`: one signed request to a device or a group, and the answers that count.
import { createPublicKey } from "node:crypto";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import type { ReplyBody } from "../commands/envelope.ts";
import { publicKeyText } from "../commands/keys.ts";
import { errorMessage } from "../core/errors.ts";
import { deviceTopics } from "../mqtt/topics.ts";
import { isRefusal, printable, type Verdict } from "./answer-trust.ts";
import { DeviceCaller, retainedText, type Signer, withClient } from "./ctl-client.ts";
import { BROKER_FLAGS, brokerOptions, ctlSettings, durationFlag, readPrivateKey } from "./ctl-settings.ts";
import { answerTrust, refusalPrinter, trustCode } from "./ctl-trust.ts";
import { EXIT, type Host, UsageError } from "./host.ts";

/**
 * `--params JSON`, `--params @FILE` or `--params -` (standard input): tensors and images are larger than one
 * shell argument may be (128 KiB on Linux).
 */
async function readParams(host: Host, flag: string): Promise<unknown> {
  let text = flag;
  let from = "--params";
  if (flag === "-") {
    if (!host.stdin) throw new UsageError("--params -: no standard input");
    const chunks: Buffer[] = [];
    for await (const chunk of host.stdin) chunks.push(Buffer.from(chunk as Buffer));
    text = Buffer.concat(chunks).toString("utf8");
    from = "--params - (standard input)";
  } else if (flag.startsWith("@")) {
    try {
      text = readFileSync(flag.slice(1), "utf8");
    } catch (err) {
      throw new UsageError(`--params ${flag}: ${errorMessage(err)}`);
    }
    from = `--params ${flag}`;
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new UsageError(`${from} must be JSON, not ${text.slice(0, 80)}`);
  }
}

/** How long a device without a retained status has to answer a ping before the call fails. */
const PING_MS = 3000;

export async function callCommand(host: Host, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      ...BROKER_FLAGS,
      key: { type: "string" },
      params: { type: "string" },
      timeout: { type: "string" },
      validity: { type: "string" },
      group: { type: "boolean" },
      expect: { type: "string" },
      unsigned: { type: "boolean" },
      wait: { type: "boolean" },
      "accept-new": { type: "boolean" },
    },
    allowPositionals: true,
  });
  const [target, command, ...extra] = positionals;
  if (target === undefined || command === undefined || extra.length > 0) {
    throw new UsageError("ctl call: expected DEVICE COMMAND");
  }
  const params = values.params === undefined ? undefined : await readParams(host, values.params);
  const expect = values.expect === undefined ? undefined : Number(values.expect);
  if (expect !== undefined && !(Number.isInteger(expect) && expect > 0))
    throw new UsageError("--expect must be a positive integer");
  const timeoutMs = durationFlag("timeout", values.timeout, 10_000);
  const validityMs = durationFlag("validity", values.validity, 60_000);
  const settings = ctlSettings(host, values);
  const keyFile = settings.key.value;
  let signer: Signer | undefined;
  if (!values.unsigned) {
    if (keyFile === undefined)
      throw new UsageError(
        "ctl call: --key FILE (or OUTPOST_CTL_KEY, or key: in ~/.outpost/ctl.yaml) is needed to sign",
      );
    const privateKey = readPrivateKey(keyFile);
    signer = { privateKey, publicText: publicKeyText(createPublicKey(privateKey)) };
  }
  const o = brokerOptions(settings);
  const trust = answerTrust(host, settings, o, values["accept-new"] === true, values.group === true);
  const refusal = refusalPrinter(host);
  const print = (reply: ReplyBody, verdict: Verdict) => {
    if (values.json) {
      const why = "why" in verdict ? { why: verdict.why } : {};
      host.stdout.write(`${JSON.stringify({ ...reply, trust: verdict.trust, ...why })}\n`);
    } else if (isRefusal(verdict)) {
      const said = reply.state === "succeeded" ? `succeeded ${JSON.stringify(reply.result)}` : reply.state;
      refusal(reply.device, verdict, verdict.trust === "forged" ? undefined : said);
    } else if (reply.state === "executing") {
      const progress = reply.progress === undefined ? "" : ` ${JSON.stringify(reply.progress)}`;
      host.stderr.write(`${printable(reply.device, 64)}: executing${printable(progress)}\n`);
    }
  };
  const status = deviceTopics(o.prefix, target).status;
  const result = await withClient(o, async (client) => {
    const caller = new DeviceCaller(client, o.prefix, signer, trust, o.commandForm);
    if (!values.group && !values.wait) {
      // A device that never connected has no retained status: say so now rather than after the whole timeout.
      // Nor has one whose status is retained on another node of a cluster (RabbitMQ keeps it where it was
      // published): a ping it answers, whatever the answer, shows it is there.
      const text = await retainedText(client, status);
      if (text !== undefined) trust.sawStatus(target, status, text);
      else {
        const unsigned = values.unsigned === true;
        const ping = await caller.call({ command: "ping", device: target, timeoutMs: PING_MS, validityMs, unsigned });
        // Any answer but a forged one: an unpinned device's is its own too, and the call then says so.
        if (ping.finals.length === 0 && ping.refused.every((r) => r.verdict.trust === "forged")) return undefined;
      }
    }
    return caller.call({
      command,
      params,
      ...(values.group ? { group: target } : { device: target }),
      timeoutMs,
      validityMs,
      expect,
      unsigned: values.unsigned === true,
      onReply: print,
    });
  });
  if (!result) {
    host.stderr.write(
      `outpost: no device ${target} has a retained status under ${status}, nor answered a ping within ${PING_MS / 1000}s (is the id right? --wait sends anyway)\n`,
    );
    return EXIT.FAILURE;
  }
  let ok = result.finals.length > 0;
  for (const reply of result.finals) {
    if (reply.state === "succeeded") {
      if (!values.json) {
        const text = JSON.stringify(reply.result, null, values.group ? undefined : 2);
        host.stdout.write(values.group ? `${reply.device}  succeeded  ${text}\n` : `${text}\n`);
      }
    } else {
      ok = false;
      host.stderr.write(
        `outpost: ${printable(reply.device, 64)}: ${printable(reply.error?.code ?? "FAILED", 64)}: ${printable(reply.error?.message ?? "", 2000)}\n`,
      );
    }
  }
  // A device whose answer could not be verified counts as one that did not answer: it fails the call, unless
  // --expect N verified answers came all the same (it is then only said). A forgery always counts (65).
  const counted = new Set(result.finals.map((r) => r.device));
  const enough = expect !== undefined && result.finals.length >= expect;
  const unverified = result.refused.filter(
    (r) => r.verdict.trust === "forged" || (!counted.has(r.reply.device) && !enough),
  );
  if (unverified.some((r) => r.verdict.trust !== "forged")) ok = false;
  if (result.finals.length === 0) {
    const what = result.refused.length > 0 ? "no verified reply" : "no reply";
    host.stderr.write(
      `outpost: TIMEOUT: ${what} from ${values.group ? "group " : ""}${target} within ${timeoutMs}ms\n`,
    );
  } else if (values.group && result.timedOut && expect !== undefined) {
    ok = false;
    host.stderr.write(`outpost: TIMEOUT: ${result.finals.length} of ${expect} devices answered, verified\n`);
  }
  return trustCode(
    unverified.map((r) => r.verdict),
    ok,
  );
}
