import { createPublicKey, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { IPublishPacket } from "mqtt";
import { z } from "zod";
import type { ReplyBody } from "../commands/envelope.ts";
import { publicKeyText } from "../commands/keys.ts";
import { errorMessage } from "../core/errors.ts";
import { type Manifest, manifestSchema, type SignedManifest, signedManifestSchema } from "../ota/manifest.ts";
import { MQTT_MAX_RANGE } from "../ota/mqtt-source.ts";
import { isRefusal, printable, type Refusal, type Verdict } from "./answer-trust.ts";
import { connectBroker, DeviceCaller } from "./ctl-client.ts";
import { BROKER_FLAGS, brokerOptions, ctlSettings, durationFlag, readPrivateKey } from "./ctl-settings.ts";
import { answerTrust, refusalPrinter, trustCode } from "./ctl-trust.ts";
import { type Host, UsageError } from "./host.ts";
import { ReleaseServer } from "./release-server.ts";

const FINAL = new Set(["committed", "rolled-back", "failed"]);

/** An update state as ctl reads it (docs/mqtt-api.md, "update"): anything else on the topic is not read. */
const updateStateSchema = z.looseObject({
  state: z.string(),
  done: z.number().optional(),
  size: z.number().optional(),
  fetched: z.number().optional(),
  version: z.string().optional(),
  from: z.string().optional(),
  code: z.string().optional(),
  reason: z.string().optional(),
});
type UpdateState = z.infer<typeof updateStateSchema>;

export interface DeviceUpdate {
  device: string;
  state: string;
  done?: number;
  size?: number;
  /** Bytes served to it over MQTT by this run. */
  served: number;
  version?: string;
  from?: string;
  code?: string;
  reason?: string;
  fetched?: number;
}

const mib = (n: number) => (n / 1024 / 1024).toFixed(1);

/** One device's line: a bar while it downloads, its state and figures otherwise. */
export function progressLine(d: DeviceUpdate, width = 24): string {
  const name = d.device.padEnd(16);
  if (d.state === "downloading" && d.size) {
    const fraction = Math.min(1, (d.done ?? 0) / d.size);
    const filled = Math.round(fraction * width);
    const bar = `[${"#".repeat(filled)}${"-".repeat(width - filled)}]`;
    return `${name} ${bar} ${String(Math.floor(fraction * 100)).padStart(3)}%  ${mib(d.done ?? 0)}/${mib(d.size)} MiB`;
  }
  const figures =
    d.state === "staged" || d.state === "committed"
      ? `  ${d.version ?? ""}${d.from ? ` (from ${d.from})` : ""}${d.fetched !== undefined ? `, fetched ${mib(d.fetched)} MiB` : ""}`
      : d.version
        ? `  ${d.version}`
        : "";
  const why = d.code || d.reason ? `: ${[d.code, d.reason].filter(Boolean).join(": ")}` : "";
  // What a device said is printed without control characters: a line break or an escape cannot forge a line.
  return printable(`${name} ${d.state}${figures}${why}`, 400);
}

export function readManifest(dir: string): { signed: SignedManifest; manifest: Manifest } {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8"));
  } catch (err) {
    throw new UsageError(
      `${join(dir, "manifest.json")}: ${errorMessage(err)} (a release directory is what outpost release writes)`,
    );
  }
  const signed = signedManifestSchema.safeParse(raw);
  const manifest = signed.success ? manifestSchema.safeParse(JSON.parse(signed.data.payload)) : undefined;
  if (!signed.success || !manifest?.success) {
    throw new UsageError(`${dir}/manifest.json is not a release manifest (outpost release writes one)`);
  }
  return { signed: signed.data, manifest: manifest.data };
}

export async function ctlUpdate(host: Host, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      ...BROKER_FLAGS,
      key: { type: "string" },
      group: { type: "string" },
      expect: { type: "string" },
      http: { type: "string" },
      timeout: { type: "string" },
      until: { type: "string" },
      "accept-new": { type: "boolean" },
    },
    allowPositionals: true,
  });
  const [first, second, ...extra] = positionals;
  const device = values.group === undefined ? first : undefined;
  const dir = values.group === undefined ? second : first;
  if (
    dir === undefined ||
    extra.length > 0 ||
    (values.group === undefined ? second === undefined : second !== undefined)
  ) {
    throw new UsageError("ctl update: expected DEVICE RELEASE_DIR, or --group GROUP --expect N RELEASE_DIR");
  }
  const expect = values.group === undefined ? 1 : Number(values.expect);
  if (!(Number.isInteger(expect) && expect > 0)) throw new UsageError("ctl update --group needs --expect N (devices)");
  const until = values.until ?? "committed";
  if (until !== "committed" && until !== "staged") throw new UsageError("--until is committed or staged");
  const timeoutMs = durationFlag("timeout", values.timeout, 600_000);
  const settings = ctlSettings(host, values);
  const keyFile = settings.key.value;
  if (keyFile === undefined)
    throw new UsageError(
      "ctl update: --key FILE (or OUTPOST_CTL_KEY, or key: in ~/.outpost/ctl.yaml) is needed to sign",
    );
  const privateKey = readPrivateKey(keyFile);
  const { signed, manifest } = readManifest(dir);
  const o = brokerOptions(settings);
  const trust = answerTrust(host, settings, o, values["accept-new"] === true, values.group !== undefined);
  const refusal = refusalPrinter(host);
  const files = new ReleaseServer(dir, manifest);
  const client = await connectBroker(o);
  /** The devices whose own signed answers say where they stand: the only ones counted. */
  const devices = new Map<string, DeviceUpdate>();
  /** What the others said (unpinned, unsigned): shown at the end, never counted. */
  const unverified = new Map<string, { state: string; verdict: Refusal }>();
  const refused: Refusal[] = [];
  /** Devices that answered this request (verified or not): in a group, only their update states are read. */
  const answered = new Set<string>();
  /** Bytes served over MQTT, by the topic they were asked on: anyone may ask (the release is signed). */
  const served = new Map<string, number>();
  /** The request each device answers: one for all, but for an old agent asked again without `until`. */
  const requestId = randomUUID();
  const answering = new Map<string, string>();
  const entry = (id: string) => {
    let d = devices.get(id);
    if (!d) {
      d = { device: id, state: "asked", served: 0 };
      devices.set(id, d);
    }
    d.served = served.get(id) ?? 0;
    return d;
  };
  /** What ctl makes of one answer; one that does not count is said once and kept for the exit code. */
  /** An answer that does not count: said once, kept for the exit code, its `state` (if any) as the last word. */
  const notCounted = (device: string, verdict: Refusal, said: string, state: string | undefined) => {
    refused.push(verdict);
    if (verdict.trust !== "forged" && state !== undefined) unverified.set(device, { state, verdict });
    refusal(device, verdict, said);
    check();
  };
  const judge = (device: string, topic: string, text: string, body: UpdateState): Verdict => {
    const verdict = trust.check(device, topic, text, body, { id: answering.get(device) ?? requestId });
    if (isRefusal(verdict)) notCounted(device, verdict, body.state, body.state);
    return verdict;
  };
  const done = (d: DeviceUpdate) => FINAL.has(d.state) || (until === "staged" && d.state === "staged");
  const tty = (host.stdout as { isTTY?: boolean }).isTTY === true && !values.json;
  let drawn = 0;
  const lastPrinted = new Map<string, string>();
  const render = () => {
    const lines = [...devices.values()].map((d) => progressLine(d));
    if (values.json) return;
    if (tty) {
      host.stdout.write(`${drawn > 0 ? `\x1b[${drawn}A` : ""}${lines.map((l) => `\x1b[2K${l}\n`).join("")}`);
      drawn = lines.length;
      return;
    }
    // Not a terminal: a line when a device's state changes, and each quarter of a download.
    for (const d of devices.values()) {
      const key = `${d.state}:${d.state === "downloading" && d.size ? Math.floor(((d.done ?? 0) / d.size) * 4) : ""}`;
      if (lastPrinted.get(d.device) === key) continue;
      lastPrinted.set(d.device, key);
      host.stdout.write(`${progressLine(d)}\n`);
    }
  };
  const base = values.group === undefined ? `${o.prefix}/${device}` : `${o.prefix}/+`;
  const deviceOf = (topic: string) => topic.slice(o.prefix.length + 1).split("/")[0] ?? "";
  let settled: () => void = () => {};
  const allDone = new Promise<void>((resolve) => {
    settled = resolve;
  });
  /**
   * Done when the devices expected have said so in their own signed answers. Only one device named alone ends
   * on an answer that cannot be verified: it will not become verifiable (an unpinned device, an agent too old
   * to sign), and it is not counted. In a group, made-up devices cannot end the wait before the real ones.
   */
  const check = () => {
    const alone = device === undefined ? undefined : unverified.get(device);
    // A pinned device signs: an unsigned final is not its own, unless its status says it runs an agent that
    // does not sign (rolled back to a release before signed answers).
    const cannotSign =
      device !== undefined && (trust.pinOf(device) === undefined || trust.status(device)?.verdict.trust === "unsigned");
    if (alone && cannotSign && !devices.has(device ?? "") && done({ device: "", served: 0, ...alone })) settled();
    if (devices.size >= expect && [...devices.values()].every(done)) settled();
  };

  const serve = (topic: string, payload: Buffer) => {
    const id = deviceOf(topic);
    // At most what a device asks for at once (MQTT_MAX_RANGE): a larger request is no device's, and would cost a
    // read and a compression.
    const bytes = files.serve(client, o.prefix, id, payload, MQTT_MAX_RANGE);
    if (bytes === 0) return;
    served.set(id, (served.get(id) ?? 0) + bytes);
    const known = devices.get(id);
    if (known) known.served = served.get(id) ?? 0;
  };

  const onMessage = (topic: string, payload: Buffer, packet: IPublishPacket) => {
    if (topic.endsWith("/update/get")) {
      serve(topic, payload);
      return;
    }
    // A retained state is the outcome of an earlier update: only what the devices say from now on counts.
    if (!topic.endsWith("/update") || packet.retain || payload.length === 0) return;
    const text = payload.toString("utf8");
    let parsed: ReturnType<typeof updateStateSchema.safeParse>;
    try {
      parsed = updateStateSchema.safeParse(JSON.parse(text));
    } catch {
      return;
    }
    // Anyone on the broker can publish here: a state of another shape is not read at all.
    if (!parsed.success) return;
    const body = parsed.data;
    const id = deviceOf(topic);
    // In a group, only the members that answered this request: another device's republished outcome, or
    // another operator's update, is not this run's.
    if (device === undefined && !answered.has(id)) return;
    // Only the device's own signed state, for this request, in order, moves its line; a final state stays.
    if (judge(id, topic, text, body).trust !== "verified" || (devices.has(id) && done(entry(id)))) return;
    const d = entry(id);
    d.state = body.state;
    for (const k of ["done", "size", "fetched"] as const) if (typeof body[k] === "number") d[k] = body[k];
    for (const k of ["version", "from", "code", "reason"] as const) if (typeof body[k] === "string") d[k] = body[k];
    if (values.json) host.stdout.write(`${JSON.stringify({ device: d.device, ...body })}\n`);
    render();
    check();
  };
  client.on("message", onMessage);
  const ticker = tty ? setInterval(() => render(), 250) : undefined;
  try {
    await client.subscribeAsync([`${base}/update/get`, `${base}/update`], { qos: 1 });
    const caller = new DeviceCaller(
      client,
      o.prefix,
      { privateKey, publicText: publicKeyText(createPublicKey(privateKey)) },
      trust,
      o.commandForm,
    );
    const source = values.http === undefined ? { mqtt: true } : { http: values.http };
    const params = { manifest: signed, source };
    const retried = new Set<string>();
    const onReply = (reply: ReplyBody, verdict: Verdict) => {
      if (verdict.trust === "duplicate" || verdict.trust === "other") return;
      if (verdict.trust !== "forged") answered.add(reply.device);
      // An agent from before `until` refuses the key it does not know (a mixed fleet): asked again without
      // it, as ctl asked before; such an agent stages without being told, and ctl stops watching at staged.
      // Such an agent does not sign: the refusal is believed only from the one device the operator named, not
      // pinned (a pinned device signs), whose status is unsigned too. In a group, a refusal anyone could have
      // forged for any device must not make ctl send an install without `until`: the operator is told instead.
      const unknownUntil = reply.error?.code === "BAD_PARAMS" && /"until"/.test(reply.error.message);
      const old =
        verdict.trust === "unsigned" &&
        reply.device === device &&
        trust.pinOf(reply.device) === undefined &&
        trust.status(reply.device)?.verdict.trust === "unsigned";
      if (reply.state === "failed" && until === "staged" && unknownUntil && device === undefined) {
        host.stderr.write(
          `outpost: ${printable(reply.device, 64)} refused "until" (an agent before it): run outpost ctl update ${printable(reply.device, 64)} ${dir} --until staged for it\n`,
        );
      }
      if (reply.state === "failed" && until === "staged" && unknownUntil && old) {
        if (!retried.has(reply.device)) {
          retried.add(reply.device);
          // Answered: waited for, never counted (it does not sign).
          refused.push(verdict);
          unverified.set(reply.device, { state: "asked", verdict });
          const again = randomUUID();
          answering.set(reply.device, again);
          caller
            .call({
              id: again,
              command: "update",
              params,
              device: reply.device,
              timeoutMs,
              validityMs: 60_000,
              onReply,
            })
            .catch((err: unknown) => host.stderr.write(`outpost: ${reply.device}: ${errorMessage(err)}\n`));
          return;
        }
      }
      if (isRefusal(verdict)) {
        // A command's `succeeded` is not an update state: the device's states on P/D/update say where it stands.
        notCounted(reply.device, verdict, reply.state, reply.state === "succeeded" ? undefined : reply.state);
        return;
      }
      if (reply.state !== "failed") return;
      // Refused before anything moved (a check, a signature), or a download that gave up.
      const d = entry(reply.device);
      d.state = "failed";
      d.code = reply.error?.code;
      d.reason = reply.error?.message;
      render();
      check();
    };
    const call = caller.call({
      id: requestId,
      command: "update",
      // The device is told only when it is to stop at staged: an agent without the installer then stages.
      params: { ...params, ...(until === "staged" ? { until } : {}) },
      ...(values.group === undefined ? { device } : { group: values.group }),
      timeoutMs,
      validityMs: 60_000,
      expect,
      onReply,
    });
    const deadline = new Promise<void>((resolve) => setTimeout(resolve, timeoutMs).unref());
    await Promise.race([
      allDone,
      deadline,
      call.then(() => (devices.size === 0 && unverified.size === 0 ? undefined : allDone)),
    ]);
  } finally {
    if (ticker) clearInterval(ticker);
    client.off("message", onMessage);
    files.close();
    await client.endAsync();
  }
  // The last states: a terminal redraws them; elsewhere only a state not yet printed is printed.
  render();
  for (const [id, u] of unverified) {
    if (devices.has(id)) continue;
    if (values.json) host.stdout.write(`${JSON.stringify({ device: id, outcome: u.state, ...u.verdict })}\n`);
    else host.stdout.write(`${printable(id, 64)}: ${printable(u.state, 64)}, not counted (${u.verdict.trust})\n`);
  }
  if (devices.size === 0) {
    if (refused.length === 0) host.stderr.write(`outpost: TIMEOUT: no device answered within ${timeoutMs} ms\n`);
    else host.stderr.write("outpost: no device gave an answer that counts\n");
    return trustCode(refused, false);
  }
  let ok = devices.size >= expect;
  for (const d of devices.values()) {
    const reached = until === "staged" ? d.state === "staged" || d.state === "committed" : d.state === "committed";
    if (!reached) ok = false;
    const line = { device: d.device, outcome: done(d) ? d.state : `timeout (${d.state})`, served: d.served };
    if (values.json)
      host.stdout.write(`${JSON.stringify({ ...line, version: d.version, code: d.code, reason: d.reason })}\n`);
    else
      host.stdout.write(
        `${printable(d.device, 64)}: ${printable(line.outcome, 64)}${d.served > 0 ? `, ${mib(d.served)} MiB served over MQTT` : ""}\n`,
      );
  }
  if (devices.size < expect) host.stderr.write(`outpost: ${devices.size} of ${expect} devices answered, verified\n`);
  return trustCode(refused, ok);
}
