import { createPublicKey } from "node:crypto";
import { parseArgs } from "node:util";
import { publicKeyText } from "../commands/keys.ts";
import { allDevices, EVERY_DEVICE } from "../mqtt/topics.ts";
import type { AnswerTrust } from "./answer-trust.ts";
import { probeRetainedWildcard } from "./broker-probe.ts";
import { DeviceCaller, withClient } from "./ctl-client.ts";
import { BROKER_FLAGS, brokerOptions, ctlSettings, durationFlag, readPrivateKey } from "./ctl-settings.ts";
import { answerTrust } from "./ctl-trust.ts";
import { EXIT, type Host, UsageError } from "./host.ts";
import { applyMessage, type DeviceView } from "./view.ts";

/**
 * `ctl devices`: every device's status. Presence comes from the retained statuses seen through `P/+/status`;
 * on a broker that shows retained messages only to exact subscriptions (RabbitMQ 3.10), from a signed `ping`
 * that every device answers (`P/_group/_all`). `--presence` chooses; auto tries the broker first. What was used
 * is printed to stderr (a `presence` field with --json).
 */
export async function devicesCommand(host: Host, args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { ...BROKER_FLAGS, wait: { type: "string" }, presence: { type: "string" }, key: { type: "string" } },
    allowPositionals: false,
  });
  const settings = ctlSettings(host, values);
  const o = brokerOptions(settings);
  const trust = answerTrust(host, settings, o, false);
  const waitMs = durationFlag("wait", values.wait, 1000);
  const presence = values.presence ?? "auto";
  if (presence !== "auto" && presence !== "retained" && presence !== "ping")
    throw new UsageError(`--presence must be auto, retained or ping, not ${presence}`);
  const seen = new Map<string, DeviceView>();
  /** Devices whose pinned key signed an answer to the ping. */
  const answered = new Set<string>();
  let used: { how: "retained" | "ping"; why: string } = { how: "retained", why: "asked for" };
  await withClient(o, async (client) => {
    client.on("message", (topic, payload) => {
      try {
        const got = applyMessage(seen, o.prefix, topic, payload);
        if (got?.kind === "status") trust.sawStatus(got.device.id, topic, payload.toString("utf8"));
      } catch {
        // A status that is not JSON is not one of ours; leave it out.
      }
    });
    // Retained statuses arrive right after the subscription; `--wait` bounds how long stragglers may take. Telemetry
    // seen meanwhile makes LAST SEEN the latest message from the device, not the time of its last status.
    await client.subscribeAsync([allDevices(o.prefix, "status"), allDevices(o.prefix, "telemetry")], { qos: 1 });
    const wildcard = presence === "auto" ? await probeRetainedWildcard(client, o.prefix, 1000) : undefined;
    if (presence === "ping" || wildcard === false) {
      used = {
        how: "ping",
        why: presence === "ping" ? "asked for" : "this broker shows retained statuses only to exact subscriptions",
      };
      if (settings.key.value === undefined)
        throw new UsageError(`ctl devices: presence by ping (${used.why}) needs --key FILE to sign it`);
      const key = readPrivateKey(settings.key.value);
      const signer = { privateKey: key, publicText: publicKeyText(createPublicKey(key)) };
      const result = await new DeviceCaller(client, o.prefix, signer, trust, o.commandForm).call({
        command: "ping",
        group: EVERY_DEVICE,
        timeoutMs: Math.max(waitMs, 3000),
        validityMs: 60_000,
      });
      for (const reply of result.finals) {
        answered.add(reply.device);
        // The answer says the device is there now; its version is in its status, which this broker keeps
        // only for exact subscriptions on the node that holds it.
        seen.set(reply.device, { id: reply.device, received: 0, status: { state: "online", ts: Date.now() } });
      }
    } else {
      used = { how: "retained", why: wildcard ? "this broker shows retained statuses through wildcards" : "asked for" };
      await new Promise((resolve) => setTimeout(resolve, waitMs));
    }
  });
  // By ping, a device is listed only if its pinned key signed an answer, and only its signed status says more
  // (anyone can publish a status or telemetry that claims a device is online).
  const verified = (id: string) => {
    const s = trust.status(id);
    return s?.verdict.trust === "verified" ? s.body : {};
  };
  const rows = [...seen.values()]
    .filter((d) => (used.how === "ping" ? answered.has(d.id) : d.status !== undefined))
    .sort((a, b) => a.id.localeCompare(b.id))
    .map((d) => {
      const s = used.how === "ping" ? { ...verified(d.id), ...d.status } : (d.status ?? {});
      const t = used.how === "ping" ? {} : (d.telemetry ?? {});
      const times = [s.ts, t.ts].filter((x): x is number => typeof x === "number");
      const ts = times.length > 0 ? Math.max(...times) : undefined;
      return {
        id: d.id,
        state: String(s.state ?? "unknown"),
        version: String(s.version ?? "-"),
        lastSeen: ts === undefined ? "-" : new Date(ts).toISOString(),
        ago: ts === undefined ? "-" : ago(Date.now() - ts),
        key: answered.has(d.id) ? "pinned" : keyState(trust, d.id),
      };
    });
  const said = used.how === "ping" ? "devices that answered a signed ping (P/_group/_all)" : "retained statuses";
  host.stderr.write(`outpost: presence from ${said}: ${used.why}\n`);
  if (values.json) {
    for (const row of rows) host.stdout.write(`${JSON.stringify({ ...row, presence: used.how })}\n`);
    return EXIT.OK;
  }
  const table = [
    ["DEVICE", "STATE", "VERSION", "KEY", "LAST SEEN"],
    ...rows.map((r) => [r.id, r.state, r.version, r.key, `${r.lastSeen} (${r.ago})`]),
  ];
  const widths = [0, 1, 2, 3].map((i) => Math.max(...table.map((row) => (row[i] ?? "").length)));
  for (const row of table) {
    host.stdout.write(`${row.map((cell, i) => (i < 4 ? cell.padEnd(widths[i] ?? 0) : cell)).join("  ")}\n`);
  }
  if (rows.length === 0) host.stderr.write(`outpost: no device status under ${allDevices(o.prefix, "status")}\n`);
  return EXIT.OK;
}

/**
 * What the device's status says of its key: `pinned` (signed by the pinned key), `unpinned`, `unsigned` (an
 * agent that does not sign), `will` (the broker's `lost`, never signed), or `FORGED` (a changed key, a bad
 * signature: `ctl call` says which).
 */
function keyState(trust: AnswerTrust, device: string): string {
  const status = trust.status(device);
  if (!status) return "-";
  const { verdict, body } = status;
  if (verdict.trust === "verified" || verdict.trust === "duplicate") return "pinned";
  if (verdict.trust === "unsigned" && body.state === "lost") return trust.pinOf(device) ? "will" : "unpinned";
  return verdict.trust === "forged" ? "FORGED" : verdict.trust;
}

function ago(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s}s ago`;
  if (s < 7200) return `${Math.round(s / 60)}m ago`;
  return `${Math.round(s / 3600)}h ago`;
}
