import { existsSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { statfs } from "node:fs/promises";
import { join } from "node:path";
import { defineCommand } from "../commands/commands.ts";
import { formatDuration } from "../config/duration.ts";
import { sleep } from "../core/clock.ts";
import { errorMessage, OutpostError } from "../core/errors.ts";
import { writeFileAtomically } from "../core/files.ts";
import { loopComponent } from "../core/lifecycle.ts";
import type { Module } from "../kernel/module.ts";
import { type AssembleProgress, assemble } from "./assemble.ts";
import { checkRelease } from "./checks.ts";
import { updateSection } from "./config.ts";
import { type Journal, outcome, readJournal, type TrialJournal, updateFiles, writeJournal } from "./journal.ts";
import { type Manifest, verifyManifest } from "./manifest.ts";
import { MqttFetcher } from "./mqtt-source.ts";
import { busyError, type Phase, type PhaseEvent, transition } from "./phase.ts";
import { chunkIndex, releaseSources, updateParams } from "./release-source.ts";
import { rolloutGuard } from "./rollouts.ts";
import { readRootRecords } from "./root-record.ts";
import { type RunningRelease, runningRelease } from "./running.ts";
import { downloadFailure, readInstall, removeStaged, STAGED, sweepStaging } from "./staging.ts";

/** An update's request carries the manifest and its source; its index may be 150 KB beside it. */
const MAX_UPDATE_REQUEST = 256 * 1024;

/** How often the trial looks at the agent's health, and a pending install at the journal. */
const WATCH_MS = 1000;
/**
 * How long a staged release may wait for root's installer, which starts within a second under the installed
 * units and takes seconds: past this, no installer runs (an agent started by hand) and the update fails.
 */
const INSTALL_WAIT_MS = 120_000;

/**
 * Over-the-air updates (docs/ota.md). The `update` command checks a signed release, fetches only the chunks
 * the running binary lacks, stages the verified file in `state.dir/update/` and asks for it to be installed;
 * root installs it (outpost-update.service) and restarts the service on trial. This module, started as the
 * release on trial, commits once the agent is healthy or asks for a rollback when `update.trialTimeout`
 * passes; started as the release returned to, it reports the rollback. Outcomes are retained on `P/D/update`.
 */
export function otaModuleFor(running: () => RunningRelease): Module<typeof updateSection> {
  return {
    name: "ota",
    config: updateSection,
    create(ctx) {
      const me = running();
      let last: Record<string, unknown> = { state: "idle" };
      const files = () => updateFiles(ctx.stateDir);
      /**
       * Where the update stands, retained on P/D/update (signed by the kernel): named by the request it answers
       * (`id`) and this start's session, so that an old genuine outcome cannot pass for a new request's.
       */
      const report = (body: Record<string, unknown>, id?: string) => {
        last = { ...body, ...(id ? { id } : {}) };
        ctx.retained.set(ctx.topics.update, { ...last, session: ctx.session, ts: ctx.clock.now() });
        if (typeof last.id === "string") rollouts.saw(last.id, last);
      };
      /** Which release directory this binary runs from (`<version>-<sha12>`); none outside the installed layout. */
      const self = me.release;
      const rootRecords = () => (me.records ? readRootRecords(me.records) : {});
      /** Where the update stands for this agent (phase.ts): what it waits for, changed only by `go`. */
      let phase: Phase = { name: "starting" };
      const go = (event: PhaseEvent) => {
        phase = transition(phase, event);
      };
      /** The phase now (read through a call: TypeScript does not see `go` change it). */
      const current = (): Phase => phase;

      /**
       * At start: where the update stands, from this release's point of view. Root's record says which trial
       * it started and how it ended; the agent's journal adds what only the agent knows (why it gave up). A
       * trial an installer older than root's records began is only in the agent's journal: while root has no
       * record at all, that one counts.
       */
      function resume(): void {
        const f = files();
        sweepStaging(f.dir, readInstall(f.install).ready, ctx.clock.now());
        const j = readJournal(f.journal);
        const root = rootRecords();
        const legacy = root.trial === undefined && root.request === undefined && j?.state === "trial" ? j : undefined;
        const rt = root.trial;
        const onTrial: TrialJournal | undefined =
          rt?.state === "trial"
            ? { state: "trial", release: rt.release, from: rt.from, to: rt.to, since: rt.since, request: rt.request }
            : legacy;
        if (onTrial && onTrial.release === self) {
          // The agent's journal may hold this trial's failure already (a restart after it gave up).
          const journal = j?.state === "trial" && j.release === onTrial.release ? { ...onTrial, ...j } : onTrial;
          const timeoutMs = ctx.config().trialTimeout;
          go({ type: "resume-trial", journal, at: ctx.clock.mono(), timeoutMs });
          writeJournal(f.journal, journal);
          ctx.logger.info({ from: journal.from.version, to: journal.to.version, timeoutMs }, "update on trial");
          report(
            { state: "trial", version: journal.to.version, from: journal.from.version, timeoutMs },
            journal.request,
          );
          return;
        }
        if (existsSync(f.install)) {
          const request = readInstall(f.install).id;
          go({ type: "resume-installing", request, at: ctx.clock.mono() });
          report({ state: "installing" }, request);
          return;
        }
        const ended = onTrial ?? (rt?.state === "rolled-back" ? rt : undefined);
        if (ended && ended.release !== self) {
          // Running, but not the release on trial, and nothing left to install: it was switched back.
          if (j?.state === "rolled-back" && j.release === ended.release && j.request === ended.request) {
            report(outcome(j));
            return;
          }
          const ownFailure = j?.state === "trial" && j.release === ended.release ? j.failure : undefined;
          const reason =
            ownFailure ??
            (rt?.state === "rolled-back" ? rt.reason : undefined) ??
            "the release on trial stopped before it committed";
          const { release, from, to, request } = ended;
          settle({
            state: "rolled-back",
            release,
            from,
            to,
            at: ctx.clock.now(),
            ...(request ? { request } : {}),
            reason,
          });
          ctx.logger.warn({ version: to.version, reason }, "update rolled back");
          return;
        }
        if (j) report(outcome(j));
      }

      function settle(j: Journal): void {
        writeJournal(files().journal, j);
        report(outcome(j));
      }

      async function watch(signal: AbortSignal): Promise<void> {
        while (!signal.aborted) {
          // A write that fails now (a full disk) is tried again at the next turn: the trial must still end.
          try {
            if (phase.name === "trial") checkTrial(phase);
            else if (phase.name === "installing") checkInstall(phase);
          } catch (err) {
            ctx.logger.error({ err: errorMessage(err), phase: phase.name }, "update step failed; trying again");
          }
          await sleep(WATCH_MS, signal, { unref: true });
        }
      }

      function checkTrial(t: Extract<Phase, { name: "trial" }>): void {
        const health = ctx.health();
        const f = files();
        if (health.ok) {
          const seconds = Math.round(ctx.clock.mono() - t.started) / 1000;
          settle({ ...t.journal, state: "committed", at: ctx.clock.now() });
          // Root ends the trial's unit settings and prunes old releases (outpost-update.service).
          writeFileAtomically(
            f.commit,
            `${JSON.stringify({ release: t.journal.release, request: t.journal.request })}\n`,
          );
          go({ type: "committed" });
          ctx.logger.info({ version: t.journal.to.version, seconds }, "update committed");
          return;
        }
        if (ctx.clock.mono() < t.deadline) return;
        const timeout = formatDuration(ctx.config().trialTimeout);
        const failure = `not healthy within ${timeout}: ${health.reasons.join("; ")}`;
        writeJournal(f.journal, { ...t.journal, failure });
        // The rollback unit switches back and restarts the service; this release stays up until then.
        writeFileAtomically(
          f.rollback,
          `${JSON.stringify({ release: t.journal.release, request: t.journal.request })}\n`,
        );
        go({ type: "trial-failed" });
        ctx.logger.error({ version: t.journal.to.version, failure }, "update failed its trial: rolling back");
        report(
          { state: "rolling-back", version: t.journal.to.version, from: t.journal.from.version, reason: failure },
          t.journal.request,
        );
      }

      function checkInstall(installing: Extract<Phase, { name: "installing" }>): void {
        const f = files();
        const answer = rootRecords().request;
        // Refused: root's record names this request and says why. Installed: root restarts the service.
        const { request } = installing;
        if (request !== undefined && answer?.request === request && answer.state === "failed") {
          // Root refused it: the staged file is of no use (root keeps its own copy only while it installs).
          removeStaged(f.install);
          rmSync(f.install, { force: true });
          go({ type: "install-refused" });
          const body = { state: "failed", version: answer.version, code: answer.code, reason: answer.reason };
          report(body, request);
          ctx.logger.error(body, "the staged update was refused by the installer");
          return;
        }
        if (ctx.clock.mono() - installing.since < INSTALL_WAIT_MS) return;
        removeStaged(f.install);
        rmSync(f.install, { force: true });
        go({ type: "install-timed-out" });
        const reason = `no installer took the staged release within ${INSTALL_WAIT_MS / 1000}s (outpost-update.path is not running: is the agent installed with outpost install?)`;
        report({ state: "failed", code: "OTA_INSTALL_FAILED", reason }, installing.request);
        ctx.logger.error({ reason }, "the staged update was not installed");
      }

      const fetcher = new MqttFetcher(ctx.direct, ctx.topics);
      const rollouts = rolloutGuard(ctx.stateDir, self, () => last);

      /** A model release goes to a task, which the request names. */
      function modelTarget(task: string | undefined) {
        const host = ctx.models();
        if (!host || task === undefined) {
          throw new OutpostError("OTA_KIND_UNSUPPORTED", "a model release needs params.task, the task it is for");
        }
        return { host, task, current: host.current(task) };
      }

      return {
        components: [
          loopComponent(
            "ota.trial",
            async (signal) => {
              try {
                resume();
              } catch (err) {
                ctx.logger.error({ err: errorMessage(err) }, "could not read where the last update stands");
              } finally {
                if (current().name === "starting") go({ type: "resumed" });
                if (current().name === "idle") rollouts.interrupted(report);
              }
              await watch(signal);
            },
            (err) => ctx.logger.error({ err }, "update watch failed"),
          ),
        ],
        commands: [
          defineCommand({
            name: "update",
            params: updateParams,
            maxRequestBytes: MAX_UPDATE_REQUEST,
            run: async (p, context) => {
              // A rollout's request again (a fresh id, the same rollout and release): answered, never run twice.
              const here = {
                idle: phase.name === "idle",
                keys: ctx.config().trustedKeys,
                model: () => p.task && ctx.models()?.current(p.task).version,
              };
              const again = p.rollout && rollouts.answer(p.rollout, p.manifest, here);
              if (again) return again;
              if (phase.name !== "idle") throw busyError(phase.name);
              go({ type: "update", request: context.id });
              const started = ctx.clock.mono();
              let manifest: Manifest | undefined;
              try {
                const config = ctx.config();
                manifest = verifyManifest(p.manifest, config.trustedKeys);
                const model = manifest.kind === "model" ? modelTarget(p.task) : undefined;
                // Known before a byte moves: staging a release nothing will install is only worth it when asked.
                const missing = model ? undefined : me.noInstaller();
                const stageOnly = missing !== undefined;
                if (stageOnly && p.until !== "staged") {
                  throw new OutpostError(
                    "OTA_NO_INSTALLER",
                    `this agent does not run from the installed layout (${missing}): nothing would install the release. 'outpost install' sets the device up; 'outpost ctl update --until staged' only stages the release`,
                  );
                }
                const st = await statfs(ctx.stateDir);
                checkRelease(manifest, {
                  kind: model ? "model" : "agent",
                  version: model ? model.current.version : me.version,
                  arch: me.arch,
                  freeBytes: st.bavail * st.bsize,
                  maxSize: config.maxSize,
                });
                const m = manifest;
                const from = releaseSources(m, p.source, { fetcher, timeoutMs: config.rangeTimeout });
                const transport = "mqtt" in p.source ? "mqtt" : "http";
                const f = files();
                mkdirSync(f.dir, { recursive: true, mode: 0o700 });
                if (p.rollout) rollouts.record(p.rollout, m, context.id, ctx.clock.now());
                // One partial download at a time: an earlier release's is of no more use. Without the installer
                // nothing takes a staged release away either: only this one is kept.
                for (const n of readdirSync(f.dir)) {
                  const kind = STAGED.exec(n)?.[1];
                  const stale = kind === "partial" || (stageOnly && kind === "ready");
                  if (stale && n !== `${m.sha256}.${kind}`) rmSync(join(f.dir, n), { force: true });
                }
                const every = config.progressInterval;
                let lastReport = Number.NEGATIVE_INFINITY;
                const onProgress = (pr: AssembleProgress) => {
                  const now = ctx.clock.mono();
                  if (now - lastReport < every && pr.done < pr.size) return;
                  lastReport = now;
                  const body = { state: "downloading", version: m.version, ...pr };
                  report(body, context.id);
                  context.progress(body);
                };
                report({ state: "downloading", version: m.version, done: 0, size: m.size }, context.id);
                const result = await assemble({
                  sha256: m.sha256,
                  size: m.size,
                  index: await chunkIndex(m, from.index, context.signal),
                  // The running binary (or the task's model) is where most chunks are; a checkout has no binary.
                  ...(model ? { current: model.current.path } : me.binary ? { current: me.binary } : {}),
                  source: from.artifact,
                  ...(from.maxRange ? { maxRange: from.maxRange } : {}),
                  partial: f.partial(m.sha256),
                  ready: f.ready(m.sha256),
                  signal: context.signal,
                  onProgress,
                });
                const done = {
                  state: "staged",
                  version: m.version,
                  transport,
                  sha256: m.sha256,
                  size: m.size,
                  fetched: result.fetched,
                  reused: result.reused,
                  resumed: result.resumed,
                  seconds: Math.round(ctx.clock.mono() - started) / 1000,
                };
                if (model) {
                  // A model is tried and kept (or dropped) by the module that runs it, here and now.
                  const outcome = await model.host.install(model.task, f.ready(m.sha256), {
                    version: m.version,
                    sha256: m.sha256,
                  });
                  rmSync(f.ready(m.sha256), { force: true });
                  const body = {
                    ...done,
                    state: outcome.state,
                    kind: "model",
                    task: model.task,
                    ...(model.current.version ? { from: model.current.version } : {}),
                    ...(outcome.state === "rolled-back" ? { reason: outcome.reason } : {}),
                  };
                  report(body, context.id);
                  ctx.logger.info(body, `model update ${outcome.state}`);
                  return body;
                }
                if (stageOnly) {
                  report(done, context.id);
                  ctx.logger.info(done, "update staged (no installer: staged as asked, not installed)");
                  return done;
                }
                // Root's installer starts on this file (outpost-update.path) and verifies everything again.
                writeFileAtomically(
                  f.install,
                  JSON.stringify({ id: context.id, manifest: p.manifest, ready: `${m.sha256}.ready` }),
                );
                go({ type: "staged", request: context.id, at: ctx.clock.mono() });
                report(done, context.id);
                ctx.logger.info(done, "update staged: waiting for the installer");
                return done;
              } catch (err) {
                const failure = downloadFailure(err, context.signal.aborted);
                if (manifest) {
                  const f = files();
                  // A transfer that stopped (the server gone, a timeout) keeps what arrived for a retry; anything
                  // else (a refusal, corrupt or mismatching bytes) leaves nothing behind.
                  if (failure.code !== "OTA_DOWNLOAD_FAILED" && failure.code !== "TASK_ABORTED")
                    rmSync(f.partial(manifest.sha256), { force: true });
                  rmSync(f.ready(manifest.sha256), { force: true });
                }
                report(
                  {
                    state: "failed",
                    ...(manifest ? { version: manifest.version } : {}),
                    code: failure.code,
                    reason: errorMessage(err),
                  },
                  context.id,
                );
                throw failure;
              } finally {
                // Staged for the installer: waiting for it now. Anything else: the command is over.
                if (current().name === "downloading") go({ type: "done" });
              }
            },
          }),
        ],
        describe: () => ({
          version: me.version,
          release: self ?? null,
          installer: me.noInstaller() === undefined,
          unitsRevision: me.unitsRevision(),
          phase: phase.name,
          trustedKeys: ctx.config().trustedKeys.length,
          last,
        }),
      };
    },
  };
}

/** Updates of this process (running.ts): the module in `src/modules.ts`. */
export const otaModule = otaModuleFor(runningRelease);
