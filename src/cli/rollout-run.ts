// Running a rollout's driver from the command line (ctl-rollout.ts): the journal, the operator's key, the
// broker connection, and the progress view while it runs.
import { createPublicKey, randomBytes } from "node:crypto";
import { fingerprintOf, publicKeyText } from "../commands/keys.ts";
import { printable } from "./answer-trust.ts";
import { connectBroker } from "./ctl-client.ts";
import { brokerOptions, type CtlSettings, readPrivateKey } from "./ctl-settings.ts";
import { answerTrust } from "./ctl-trust.ts";
import { EXIT, type Host, UsageError } from "./host.ts";
import { brokerId, brokerIds } from "./known-devices.ts";
import { driveRollout } from "./rollout-driver.ts";
import { machineId, RolloutJournal } from "./rollout-journal.ts";
import { rolloutStatus, statusText, waveTable } from "./rollout-view.ts";
import { LeaseRefused } from "./rollout-wire.ts";
export function openJournal(settings: CtlSettings): RolloutJournal {
  const path = settings.rollouts.value;
  if (path === undefined) throw new UsageError("ctl rollout: --rollouts FILE (no home directory for the default)");
  return new RolloutJournal(path);
}

/** The operator's key: it signs the requests, and names who made or changed a rollout. */
export function signerOf(settings: CtlSettings) {
  const keyFile = settings.key.value;
  if (keyFile === undefined) {
    throw new UsageError(
      "ctl rollout: --key FILE (or OUTPOST_CTL_KEY, or key: in ~/.outpost/ctl.yaml) is needed to sign",
    );
  }
  const privateKey = readPrivateKey(keyFile);
  const publicText = publicKeyText(createPublicKey(privateKey));
  return { privateKey, publicText, by: fingerprintOf(publicText) };
}

/** Runs the driver in this process until the rollout completes, pauses or is aborted, or ctl is stopped. */
export async function drive(
  host: Host,
  settings: CtlSettings,
  journal: RolloutJournal,
  id: string,
  signer: ReturnType<typeof signerOf>,
  json: boolean,
): Promise<number> {
  const r = journal.rollout(id);
  if (!r) return EXIT.FAILURE;
  const o = brokerOptions(settings);
  // Made through any broker of the list: the list is one fleet, whichever node ctl names first today.
  if (!brokerIds(o.url, o.failover).includes(r.broker) || o.prefix !== r.prefix) {
    throw new UsageError(
      `${id} was made for ${r.broker} (${r.prefix}); ctl is set for ${brokerId(o.url)} (${o.prefix})`,
    );
  }
  const trust = answerTrust(host, settings, o, false, true);
  const client = await connectBroker(o);
  const controller = new AbortController();
  void host.stopRequested.then(() => controller.abort());
  const tty = host.stdout.isTTY === true && !json;
  let drawn = 0;
  const redraw = () => {
    const row = journal.rollout(id);
    if (!row) return;
    const lines = waveTable(rolloutStatus(journal, row)).concat(row.waiting ? [`waits: ${row.waiting}`] : []);
    host.stdout.write(`${drawn > 0 ? `\x1b[${drawn}A` : ""}${lines.map((l) => `\x1b[2K${l}\n`).join("")}`);
    drawn = lines.length;
  };
  const ticker = tty ? setInterval(redraw, 1000) : undefined;
  try {
    const end = await driveRollout({
      journal,
      id,
      client,
      trust,
      signer,
      me: {
        holder: `${machineId()}:${host.pid ?? 0}:${randomBytes(4).toString("hex")}`,
        pid: host.pid ?? 0,
        machine: machineId(),
      },
      alive: host.isAlive ?? (() => true),
      signal: controller.signal,
      onEvent: (e) => {
        if (json) host.stdout.write(`${JSON.stringify({ rollout: id, ...e })}\n`);
        else if (!tty && (e.kind !== "device" || !e.text.startsWith("committed"))) {
          host.stdout.write(`${e.device ? `${printable(e.device, 64)}: ` : ""}${printable(e.text, 300)}\n`);
        }
      },
    });
    if (tty) redraw();
    const row = journal.rollout(id);
    const s = row ? rolloutStatus(journal, row) : undefined;
    if (s && !json) host.stdout.write(statusText(s));
    if (end === "completed") return EXIT.OK;
    host.stderr.write(
      `outpost: ${id} ${end}${row?.reason ? `: ${row.reason}` : ""}${end === "paused" ? ` (outpost ctl rollout resume ${id} goes on)` : ""}\n`,
    );
    return EXIT.FAILURE;
  } catch (err) {
    if (err instanceof LeaseRefused) {
      host.stderr.write(`outpost: ${err.message}\n`);
      return EXIT.FAILURE;
    }
    if (controller.signal.aborted) {
      host.stderr.write(`outpost: stopped driving ${id}; it goes on with outpost ctl rollout resume ${id}\n`);
      return EXIT.FAILURE;
    }
    throw err;
  } finally {
    if (ticker) clearInterval(ticker);
    await client.endAsync();
  }
}
