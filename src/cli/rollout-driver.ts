// A rollout's driver (issue 26): a reconciler over the journal (rollout-journal.ts). Each turn it reads the
// rollout (another ctl may have paused, resumed, approved or aborted it), times out devices past their
// deadline, judges the waves (pause, pass, soak, approval, next wave) and asks the devices whose turn it is.
// Every change is written before it is acted on; what devices say counts only when their pinned key signed it.
// Killed anywhere and started again, it goes on from the journal and from the devices' retained states.
import type { z } from "zod";
import { sleep } from "../core/clock.ts";
import { errorMessage } from "../core/errors.ts";
import { deviceTopics } from "../mqtt/topics.ts";
import { type Manifest, manifestSchema } from "../ota/manifest.ts";
import { MQTT_MAX_RANGE } from "../ota/mqtt-source.ts";
import { isRefusal, type Refusal } from "./answer-trust.ts";
import { ReleaseServer } from "./release-server.ts";
import {
  type DeviceRow,
  type DeviceState,
  FINISHED,
  type FrozenPlan,
  IN_FLIGHT,
  type RolloutRow,
  requestIdOf,
  type WaveRow,
  waveCounts,
} from "./rollout-journal.ts";
import { wavePassed, wavePauses } from "./rollout-plan.ts";
import { PresenceProbe } from "./rollout-presence.ts";
import {
  ACK_MS,
  backoff,
  type DriverOptions,
  LEASE_MS,
  LeaseRefused,
  RETRY,
  replySchema,
  SETTLE_MS,
  signedRequest,
  stateSchema,
} from "./rollout-wire.ts";

/** Drives the rollout until it completes, pauses with nothing in flight, or is aborted; returns that state. */
export async function driveRollout(o: DriverOptions): Promise<RolloutRow["state"]> {
  const { journal, id, client } = o;
  const now = o.now ?? Date.now;
  const ackMs = o.ackMs ?? ACK_MS;
  const start = journal.rollout(id);
  if (!start) throw new Error(`no rollout ${id}`);
  if (start.machine !== o.me.machine) {
    throw new LeaseRefused(
      `${id} is bound to the operator machine ${start.machine}, where it was made: drive it there (this is ${o.me.machine})`,
    );
  }
  const plan: FrozenPlan = journal.plan(start);
  const prefix = start.prefix;
  const renew = () => {
    const l = journal.lease(id, o.me, now(), now() + LEASE_MS, o.alive);
    if (!l.ok) throw new LeaseRefused(`${id} is driven by ${l.holder} (pid ${l.pid} on ${l.machine})`);
  };
  renew();
  const rows = new Map(journal.devices(id).map((d) => [d.device, d]));
  /** Read again each turn: an operator's approval comes from another process. */
  let waves: WaveRow[] = journal.waves(id);
  /** Every request id this rollout used or will use per device, so a state naming any of them is ours. */
  const owner = new Map<string, string>();
  const own = (d: DeviceRow) => {
    for (let k = 1; k <= d.attempt; k++) owner.set(requestIdOf(id, d.device, k), d.device);
  };
  for (const d of rows.values()) own(d);
  const releases = new Map(
    plan.releases.map((r) => [r.arch, { ...r, manifest: manifestSchema.parse(JSON.parse(payloadOf(r.signed))) }]),
  );
  // Opened once, at start: a release directory moved away fails here, not inside a message handler.
  const servers = new Map<string, ReleaseServer>(
    "mqtt" in plan.source
      ? [...releases].map(([arch, r]) => [arch, new ReleaseServer(r.dir, r.manifest as Manifest)])
      : [],
  );
  const serverFor = (arch: string | undefined) =>
    (arch === undefined ? undefined : servers.get(arch)) ?? servers.get("any");
  const refusedSaid = new Set<string>();
  const save = (d: DeviceRow) => journal.saveDevice(id, d, now());
  // A device's signed answer says it is there, where its status cannot reach us (rollout-presence.ts).
  const onSeen = (device: string) => {
    const d = rows.get(device);
    if (d && !d.present) save(Object.assign(d, { present: 1 }));
  };
  const presence = new PresenceProbe({ client, prefix, trust: o.trust, signer: o.signer, onSeen });
  const policy = plan.policy;

  const finish = (d: DeviceRow, state: DeviceState, said: string, code?: string, reason?: string) => {
    // A final state stays, but a device timed out may still say how it ended (a late outcome, reconciled).
    if (FINISHED.has(d.state) && d.state !== "timed-out") return;
    Object.assign(d, { state, said, code: code ?? null, reason: reason ?? null });
    save(d);
    o.onEvent({ kind: "device", device: d.device, text: state + (code || reason ? `: ${code ?? reason}` : "") });
  };
  /**
   * A failure: final, unless its code says nothing was installed. Then the device is asked again (after a
   * backoff), but only for its latest request while it is in flight: a late answer to an earlier request
   * (a queued request that expired while the device was away) changes nothing.
   */
  const failedOrRetry = (d: DeviceRow, code: string | undefined, reason: string | undefined, request: string) => {
    if (code !== undefined && RETRY.has(code)) {
      if (IN_FLIGHT.has(d.state) && request === requestIdOf(id, d.device, d.attempt)) {
        Object.assign(d, { state: "pending", said: `asked again after ${code}`, code, reason: reason ?? null });
        save(d);
      }
      return;
    }
    finish(d, "failed", "failed", code, reason);
  };
  const updating = (d: DeviceRow, said: string) => {
    if (!IN_FLIGHT.has(d.state) || (d.state === "updating" && d.said === said)) return;
    Object.assign(d, { state: "updating", said });
    save(d);
  };
  /** A state on P/D/update, or the `last` of a `repeat` answer. */
  const applyState = (d: DeviceRow, s: z.infer<typeof stateSchema>, request: string) => {
    if (s.state === "committed") finish(d, "committed", "committed");
    else if (s.state === "rolled-back") finish(d, "rolled-back", "rolled-back", undefined, s.reason);
    else if (s.state === "failed") failedOrRetry(d, s.code, s.reason, request);
    else updating(d, s.state);
  };
  const refused = (device: string, v: Refusal) => {
    const key = `${device}\n${v.trust}`;
    if (refusedSaid.has(key)) return;
    refusedSaid.add(key);
    o.onEvent({ kind: "refused", device, text: `${v.trust}: ${v.why}` });
  };

  const onMessage = (topic: string, payload: Buffer) => {
    try {
      handle(topic, payload);
    } catch (err) {
      // One bad message (or a journal write that failed) must not take the driver's connection down.
      o.onEvent({ kind: "refused", text: `a message on ${topic} was not handled: ${errorMessage(err)}` });
    }
  };
  const handle = (topic: string, payload: Buffer) => {
    if (!topic.startsWith(`${prefix}/`)) return;
    const [device = "", ...rest] = topic.slice(prefix.length + 1).split("/");
    const what = rest.join("/");
    const text = payload.toString("utf8");
    if (presence.handle(device, what, topic, text)) return;
    if (what === "status") {
      o.trust.sawStatus(device, topic, text);
      const d = rows.get(device);
      if (!d) return;
      const s = o.trust.status(device);
      const present = s?.verdict.trust === "verified" && s.body.state === "online" ? 1 : 0;
      if (present !== d.present) {
        d.present = present;
        save(d);
      }
      return;
    }
    const d = rows.get(device);
    if (!d) return;
    if (what === "update/get") {
      if (IN_FLIGHT.has(d.state)) serverFor(archOf(device))?.serve(client, prefix, device, payload, MQTT_MAX_RANGE);
      return;
    }
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      return;
    }
    if (what === "update") {
      const s = stateSchema.safeParse(body);
      if (!s.success || s.data.id === undefined || owner.get(s.data.id) !== device) return;
      const v = o.trust.check(device, topic, text, s.data, { id: s.data.id });
      if (isRefusal(v)) refused(device, v);
      if (v.trust === "verified") applyState(d, s.data, s.data.id);
      return;
    }
    if (what === "cmd/update/reply") {
      const r = replySchema.safeParse(body);
      if (!r.success || owner.get(r.data.id) !== device || r.data.device !== device) return;
      const v = o.trust.check(device, topic, text, r.data, {
        id: r.data.id,
        command: "update",
        requestTopic: deviceTopics(prefix, device).command("update"),
      });
      if (isRefusal(v)) refused(device, v);
      if (v.trust !== "verified") return;
      const reply = r.data;
      if (reply.state === "failed") failedOrRetry(d, reply.error?.code, reply.error?.message, reply.id);
      else if (reply.state !== "succeeded") updating(d, reply.state);
      else if (reply.result?.state === "current") finish(d, "committed", "already current");
      else if (reply.result?.state === "repeat") {
        // What came of the request it acted on: that request's outcome (a retry is judged as that request's).
        const last = reply.result.last;
        if (last) applyState(d, last, typeof reply.result.request === "string" ? reply.result.request : reply.id);
        else updating(d, "repeat");
      } else if (reply.result?.state) applyState(d, { state: reply.result.state }, reply.id);
    }
  };

  /** The device's arch, from its own signed status only (anyone can publish a status). */
  const archOf = (device: string): string | undefined => {
    const s = o.trust.status(device);
    return s?.verdict.trust === "verified" && typeof s.body.arch === "string" ? s.body.arch : presence.arch(device);
  };

  const ask = (d: DeviceRow, t: number) => {
    const arch = archOf(d.device);
    // Present from the journal (a restarted driver) but its arch not yet known where statuses do not reach us:
    // asked what it runs first, not failed for want of a release.
    if (arch === undefined && !releases.has("any") && o.trust.status(d.device) === undefined) {
      presence.ask(d.device, t);
      return;
    }
    const release = (arch === undefined ? undefined : releases.get(arch)) ?? releases.get("any");
    if (!release) {
      finish(d, "failed", "failed", "NO_RELEASE", `no release in this rollout for linux-${arch ?? "unknown"}`);
      return;
    }
    d.attempt++;
    Object.assign(d, {
      state: "asked",
      asked: t,
      first_asked: d.first_asked ?? t,
      deadline: d.deadline ?? t + policy.deadlineMs,
      said: null,
    });
    const requestId = requestIdOf(id, d.device, d.attempt);
    owner.set(requestId, d.device);
    // Written (and synced) before the request goes out: a driver killed between the two asks again, and the
    // device answers the second from its own record of the rollout.
    save(d);
    const params = {
      manifest: release.signed,
      source: plan.source,
      rollout: id,
      ...(plan.task ? { task: plan.task } : {}),
    };
    const signed = signedRequest(requestId, d.device, params, t, o.signer);
    client.publish(deviceTopics(prefix, d.device).command("update"), signed, { qos: 1 });
  };

  let lastWaiting: string | null = start.waiting;
  const wait = (text: string | null) => {
    if (text === lastWaiting) return;
    lastWaiting = text;
    journal.setWaiting(id, text);
    if (text) o.onEvent({ kind: "waiting", text });
  };

  /** One turn of the reconciler; returns the state to end in, or undefined to go on. */
  const turn = (): RolloutRow["state"] | undefined => {
    renew();
    const r = journal.rollout(id);
    if (!r) return "aborted";
    if (r.state === "aborted" || r.state === "completed") return r.state;
    let state = r.state;
    const t = now();
    waves = journal.waves(id);
    const forgiven = journal.forgivenDevices(id);
    for (const d of rows.values()) {
      d.forgiven = forgiven.has(d.device) ? 1 : 0;
      // Past its deadline: timed out, whether a request is out or it waits to be asked again (asking it then
      // would start an update already counted as failed). A late outcome is still reconciled.
      if ((IN_FLIGHT.has(d.state) || d.state === "pending") && d.deadline !== null && t > d.deadline) {
        const reason = `not committed within ${Math.round(policy.deadlineMs / 1000)}s of the first request`;
        finish(d, "timed-out", d.said ?? "asked", "TIMED_OUT", reason);
      } else if (d.state === "asked" && d.asked !== null && t - d.asked > ackMs) {
        // No answer at all: the request may never have gone out (a driver killed), or expired on the way.
        Object.assign(d, { state: "pending", said: "no answer: asked again" });
        save(d);
      }
    }
    const started = waves.filter((w) => w.started !== null);
    // Each started wave's counts, once a turn: the pause rule and the pass rule read the same figures.
    const counts = new Map(
      started.map((w) => [w.wave, waveCounts([...rows.values()].filter((d) => d.wave === w.wave))]),
    );
    for (const w of started) {
      const c = counts.get(w.wave) ?? waveCounts([]);
      const judged = { finished: c.finished, failed: c.failures };
      if (state === "running" && wavePauses(w.wave, judged, policy)) {
        const reason =
          w.wave === 0
            ? `a canary failed (${judged.failed} of ${c.total} in wave 1)`
            : `wave ${w.wave + 1}: ${judged.failed} of ${judged.finished} finished failed, over ${Math.round(policy.failure * 1000) / 10}%`;
        if (journal.setState(id, "paused", { by: "driver", reason, now: t, from: ["running"] })) {
          o.onEvent({ kind: "state", text: `paused: ${reason}` });
          state = "paused";
        }
      }
    }
    const inFlight = [...rows.values()].filter((d) => IN_FLIGHT.has(d.state)).length;
    if (state === "paused") {
      wait(`paused: ${r.reason ?? ""}${inFlight > 0 ? ` (${inFlight} still updating)` : ""}`);
      return inFlight === 0 ? "paused" : undefined;
    }
    // The waves: the first starts at once; each later one when the one before passed and soaked (and, with
    // approval, an operator approved it).
    const cur = started.length === 0 ? -1 : (started.at(-1)?.wave ?? -1);
    const next = waves[cur + 1];
    if (cur === -1) startWave(0, t);
    else if (!next) {
      // The last wave gates nothing: the rollout ends once every reachable device of every wave finished.
      const open = [...rows.values()].filter(
        (d) =>
          IN_FLIGHT.has(d.state) || (d.state === "pending" && (d.present || presence.awaiting(d.device, t, ackMs))),
      );
      if (open.length === 0) {
        const all = waveCounts(rows.values());
        const reason = `${all.committed} committed, ${all.failures} failed${all.forgiven > 0 ? `, ${all.forgiven} failures accepted` : ""}${all.offline > 0 ? `, ${all.offline} offline (not updated: ctl rollout resume ${id} when they are back)` : ""}`;
        journal.setState(id, "completed", { by: "driver", reason, now: t, from: ["running"] });
        o.onEvent({ kind: "state", text: `completed: ${reason}` });
        return "completed";
      }
      wait(`the last wave: ${open.length} devices not finished`);
    } else {
      const wave = waves[cur] as WaveRow;
      const c = counts.get(cur) ?? waveCounts([]);
      // A wave passes on evidence: at least one device committed (a wave of devices all offline waits).
      // A wave whose failures were all accepted (a lone canary, resumed) has nothing left to prove.
      const proved = c.committed > 0 || (c.reachable === 0 && c.forgiven > 0);
      if (!proved || !wavePassed(cur, c, policy)) {
        if (wave.met !== null) {
          wave.met = null;
          journal.saveWave(id, wave);
        }
        const needed = cur === 0 ? c.reachable : Math.ceil(policy.success * c.reachable - 1e-9);
        wait(`wave ${cur + 1}: ${c.committed} of ${c.reachable} reachable committed, ${needed} needed`);
      } else {
        if (wave.met === null) {
          wave.met = t;
          journal.saveWave(id, wave);
        }
        if (t < wave.met + policy.soakMs) {
          wait(`wave ${cur + 1} passed: soaking until ${new Date(wave.met + policy.soakMs).toISOString()}`);
        } else if (policy.approval && next.approved === null) {
          wait(`wave ${cur + 2} waits for approval: outpost ctl rollout approve ${id}`);
        } else startWave(next.wave, t);
      }
    }
    // Whose turn it is: pending devices of the started waves that are online, in plan order, within the cap.
    let slots = policy.cap === undefined ? Number.POSITIVE_INFINITY : policy.cap - inFlight;
    const upTo = waves.filter((w) => w.started !== null).length;
    // A device not seen is asked whether it is there even when the cap is full: until it answers it counts as
    // offline, and a wave must not pass for want of asking.
    for (const d of rows.values()) {
      if (d.wave >= upTo || d.state !== "pending") continue;
      if (!d.present) presence.ask(d.device, t);
      else if (slots > 0 && (d.asked === null || t - d.asked >= backoff(d.attempt))) {
        ask(d, t);
        slots--;
      }
    }
    return undefined;
  };

  const startWave = (w: number, t: number) => {
    const wave = waves[w];
    if (!wave) return;
    wave.started = t;
    journal.saveWave(id, wave);
    journal.event(id, t, "driver", `wave ${w + 1} started`);
    o.onEvent({
      kind: "wave",
      text: `wave ${w + 1} started (${[...rows.values()].filter((d) => d.wave === w).length} devices)`,
    });
  };

  client.on("message", onMessage);
  try {
    await client.subscribeAsync(
      [
        `${prefix}/+/status`,
        `${prefix}/+/update`,
        `${prefix}/+/cmd/update/reply`,
        `${prefix}/+/update/get`,
        presence.replies,
      ],
      { qos: 1 },
    );
    // The retained statuses and update states first: presence, and what devices said while no driver ran.
    await sleep(SETTLE_MS, o.signal).catch(() => {});
    if (o.signal.aborted) throw o.signal.reason;
    for (;;) {
      const end = turn();
      if (end) return end;
      // sleep() resolves at once when stopped: without this check the loop spun without ever yielding.
      await sleep(o.tickMs ?? 500, o.signal);
      if (o.signal.aborted) throw o.signal.reason;
    }
  } finally {
    client.off("message", onMessage);
    for (const s of servers.values()) s.close();
    journal.release(id, o.me.holder);
  }
}

function payloadOf(signed: unknown): string {
  const p = (signed as { payload?: unknown }).payload;
  return typeof p === "string" ? p : "{}";
}
