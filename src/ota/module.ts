import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { statfs } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import * as sea from "node:sea";
import { z } from "zod";
import { defineCommand } from "../commands/commands.ts";
import { durationMs } from "../config/duration.ts";
import { parseSize } from "../config/size.ts";
import { sleep } from "../core/clock.ts";
import { errorMessage, isOutpostError, OutpostError } from "../core/errors.ts";
import { writeFileAtomically } from "../core/files.ts";
import { loopComponent } from "../core/lifecycle.ts";
import type { Module } from "../kernel/module.ts";
import { releaseVersion, VERSION } from "../version.ts";
import type { ByteSource } from "./assemble.ts";
import { type AssembleProgress, assemble } from "./assemble.ts";
import { checkRelease } from "./checks.ts";
import { updateSection } from "./config.ts";
import { httpSource } from "./http-source.ts";
import { type Journal, readJournal, type TrialJournal, updateFiles, writeJournal } from "./journal.ts";
import { type ChunkIndex, chunkIndexSchema, type Manifest, signedManifestSchema, verifyManifest } from "./manifest.ts";
import { MQTT_MAX_RANGE, MqttFetcher } from "./mqtt-source.ts";
import { readRootRecords } from "./root-record.ts";

const updateParams = z.strictObject({
  manifest: signedManifestSchema,
  /**
   * Where the release's files are: over HTTP(S), the artifact and its index beside it at this base URL; over
   * MQTT, asked for range by range from whoever serves the release (`outpost ctl update`).
   */
  source: z.union([
    z.strictObject({ http: z.url({ protocol: /^https?$/ }) }),
    z.strictObject({ mqtt: z.literal(true) }),
  ]),
  /** For a model release: the task whose model it replaces. */
  task: z
    .string()
    .regex(/^[A-Za-z0-9_.-]{1,64}$/)
    .optional(),
  /**
   * "staged": the operator wants the release staged and no more (`ctl update --until staged`), so an agent
   * without the installer stages it and ends there. An installed agent installs it all the same.
   */
  until: z.literal("staged").optional(),
});

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
export const otaModule: Module<typeof updateSection> = {
  name: "ota",
  config: updateSection,
  create(ctx) {
    let busy = false;
    let last: Record<string, unknown> = { state: "idle" };
    const files = () => updateFiles(ctx.config().state.dir);
    const report = (body: Record<string, unknown>) => {
      last = body;
      ctx.retained.set(ctx.topics.update, { ...body, ts: ctx.clock.now() });
    };
    /** Which release directory this binary runs from (`<version>-<sha12>`); none outside the installed layout. */
    const self = sea.isSea() ? releaseDirOf(process.execPath) : undefined;
    /** Root's own record of an update, in the layout this binary runs from (`/opt/outpost/update`). */
    const records = self ? join(dirname(dirname(dirname(process.execPath))), "update") : undefined;
    /** Whether root's installer is there: the layout, and the units' script `install` writes beside it. */
    const installer = () => records !== undefined && unitsRevision(dirname(records)) !== null;
    const rootRecords = () => (records ? readRootRecords(records) : {});
    /** What the agent waits for: root to install a staged release, or its own trial to end. */
    let phase: "idle" | "installing" | "trial" | "rolling-back" = "idle";
    let trial: { journal: TrialJournal; deadline: number; started: number } | undefined;
    let installingSince = 0;
    /** The id of the request root is asked to install: its answer in root's record names it. */
    let pending: string | undefined;

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
        const timeoutMs = durationMs(ctx.config().update.trialTimeout);
        trial = { journal, deadline: ctx.clock.mono() + timeoutMs, started: ctx.clock.mono() };
        phase = "trial";
        writeJournal(f.journal, journal);
        ctx.logger.info({ from: journal.from.version, to: journal.to.version, timeoutMs }, "update on trial");
        report({ state: "trial", version: journal.to.version, from: journal.from.version, timeoutMs });
        return;
      }
      if (existsSync(f.install)) {
        phase = "installing";
        installingSince = ctx.clock.mono();
        pending = readInstall(f.install).id;
        report({ state: "installing" });
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
          if (phase === "trial" && trial) checkTrial(trial);
          else if (phase === "installing") checkInstall();
        } catch (err) {
          ctx.logger.error({ err: errorMessage(err), phase }, "update step failed; trying again");
        }
        await sleep(WATCH_MS, signal, { unref: true });
      }
    }

    function checkTrial(t: NonNullable<typeof trial>): void {
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
        phase = "idle";
        ctx.logger.info({ version: t.journal.to.version, seconds }, "update committed");
        return;
      }
      if (ctx.clock.mono() < t.deadline) return;
      const timeout = ctx.config().update.trialTimeout;
      const failure = `not healthy within ${timeout}: ${health.reasons.join("; ")}`;
      writeJournal(f.journal, { ...t.journal, failure });
      // The rollback unit switches back and restarts the service; this release stays up until then.
      writeFileAtomically(
        f.rollback,
        `${JSON.stringify({ release: t.journal.release, request: t.journal.request })}\n`,
      );
      phase = "rolling-back";
      ctx.logger.error({ version: t.journal.to.version, failure }, "update failed its trial: rolling back");
      report({ state: "rolling-back", version: t.journal.to.version, from: t.journal.from.version, reason: failure });
    }

    function checkInstall(): void {
      const f = files();
      const answer = rootRecords().request;
      // Refused: root's record names this request and says why. Installed: root restarts the service.
      if (pending !== undefined && answer?.request === pending && answer.state === "failed") {
        // Root refused it: the staged file is of no use (root keeps its own copy only while it installs).
        removeStaged(f.install);
        rmSync(f.install, { force: true });
        phase = "idle";
        pending = undefined;
        const body = { state: "failed", version: answer.version, code: answer.code, reason: answer.reason };
        report(body);
        ctx.logger.error(body, "the staged update was refused by the installer");
        return;
      }
      if (ctx.clock.mono() - installingSince < INSTALL_WAIT_MS) return;
      removeStaged(f.install);
      rmSync(f.install, { force: true });
      phase = "idle";
      pending = undefined;
      const reason = `no installer took the staged release within ${INSTALL_WAIT_MS / 1000}s (outpost-update.path is not running: is the agent installed with outpost install?)`;
      report({ state: "failed", code: "OTA_INSTALL_FAILED", reason });
      ctx.logger.error({ reason }, "the staged update was not installed");
    }

    const fetcher = new MqttFetcher(ctx.direct, ctx.topics);

    /** A model release goes to a task, which the request names. */
    function modelTarget(task: string | undefined) {
      const host = ctx.models();
      if (!host || task === undefined) {
        throw new OutpostError("OTA_KIND_UNSUPPORTED", "a model release needs params.task, the task it is for");
      }
      return { host, task, current: host.current(task) };
    }

    /** The release's two files, from where the request says they are. */
    function sources(m: Manifest, source: z.output<typeof updateParams>["source"]) {
      const timeoutMs = durationMs(ctx.config().update.rangeTimeout);
      if ("mqtt" in source) {
        const from = (file: "artifact" | "index") => fetcher.source({ release: m.sha256, file, timeoutMs });
        return { artifact: from("artifact"), index: from("index"), maxRange: MQTT_MAX_RANGE };
      }
      const base = source.http.endsWith("/") ? source.http : `${source.http}/`;
      const at = (name: string, size: number) => httpSource({ url: new URL(name, base).href, size, timeoutMs });
      const ref = "chunks" in m.index ? undefined : m.index;
      return {
        artifact: at(m.artifact, m.size),
        index: ref ? at(`index-${ref.sha256}.json`, ref.size) : undefined,
        maxRange: undefined,
      };
    }

    /** The chunk index: inline in the manifest, or a file named by its hash (`source`: where it is). */
    async function index(m: Manifest, source: ByteSource | undefined, signal: AbortSignal): Promise<ChunkIndex> {
      if ("chunks" in m.index) return m.index;
      const ref = m.index;
      if (!source) throw new OutpostError("OTA_MANIFEST_INVALID", "the chunk index has no source");
      // Fetched like a chunk: never more bytes than the signed manifest declares, checked against its sha256.
      const bytes = await source.read(
        0,
        ref.size,
        signal,
        (b) => createHash("sha256").update(b).digest("hex") === ref.sha256,
      );
      if (createHash("sha256").update(bytes).digest("hex") !== ref.sha256) {
        throw new OutpostError("OTA_CHUNK_CORRUPT", "the chunk index does not match its sha256");
      }
      let json: unknown;
      try {
        json = JSON.parse(Buffer.from(bytes).toString("utf8"));
      } catch {
        json = undefined;
      }
      const parsed = chunkIndexSchema.safeParse(json);
      if (!parsed.success) throw new OutpostError("OTA_MANIFEST_INVALID", "the chunk index is malformed");
      return parsed.data;
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
            if (busy) throw new OutpostError("OTA_BUSY", "an update is already running");
            if (phase !== "idle") throw new OutpostError("OTA_BUSY", `an update is ${phase.replace("-", " ")}`);
            busy = true;
            const started = ctx.clock.mono();
            let manifest: Manifest | undefined;
            try {
              const config = ctx.config().update;
              manifest = verifyManifest(p.manifest, config.trustedKeys);
              const model = manifest.kind === "model" ? modelTarget(p.task) : undefined;
              // Known before a byte moves: staging a release nothing will install is only worth it when asked.
              const stageOnly = !model && !installer();
              if (stageOnly && p.until !== "staged") {
                throw new OutpostError(
                  "OTA_NO_INSTALLER",
                  `this agent does not run from the installed layout (${self ? "its update units are missing" : sea.isSea() ? `${process.execPath} is not in a release directory of 'outpost install'` : "it runs from a checkout"}): nothing would install the release. 'outpost install' sets the device up; 'outpost ctl update --until staged' only stages the release`,
                );
              }
              const st = await statfs(ctx.config().state.dir);
              checkRelease(manifest, {
                kind: model ? "model" : "agent",
                version: model ? model.current.version : VERSION,
                arch: process.arch,
                freeBytes: st.bavail * st.bsize,
                maxSize: parseSize(config.maxSize) ?? 0,
              });
              const m = manifest;
              const from = sources(m, p.source);
              const transport = "mqtt" in p.source ? "mqtt" : "http";
              const f = files();
              mkdirSync(f.dir, { recursive: true, mode: 0o700 });
              // One partial download at a time: an earlier release's is of no more use. Without the installer
              // nothing takes a staged release away either: only this one is kept.
              for (const n of readdirSync(f.dir)) {
                const kind = STAGED.exec(n)?.[1];
                const stale = kind === "partial" || (stageOnly && kind === "ready");
                if (stale && n !== `${m.sha256}.${kind}`) rmSync(join(f.dir, n), { force: true });
              }
              const every = durationMs(config.progressInterval);
              let lastReport = Number.NEGATIVE_INFINITY;
              const onProgress = (pr: AssembleProgress) => {
                const now = ctx.clock.mono();
                if (now - lastReport < every && pr.done < pr.size) return;
                lastReport = now;
                const body = { state: "downloading", version: m.version, ...pr };
                report(body);
                context.progress(body);
              };
              report({ state: "downloading", version: m.version, done: 0, size: m.size });
              const result = await assemble({
                sha256: m.sha256,
                size: m.size,
                index: await index(m, from.index, context.signal),
                // The running binary (or the task's model) is where most chunks are; a checkout has no binary.
                ...(model ? { current: model.current.path } : sea.isSea() ? { current: process.execPath } : {}),
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
                report(body);
                ctx.logger.info(body, `model update ${outcome.state}`);
                return body;
              }
              if (stageOnly) {
                report(done);
                ctx.logger.info(done, "update staged (no installer: staged as asked, not installed)");
                return done;
              }
              // Root's installer starts on this file (outpost-update.path) and verifies everything again.
              writeFileAtomically(
                f.install,
                JSON.stringify({ id: context.id, manifest: p.manifest, ready: `${m.sha256}.ready` }),
              );
              pending = context.id;
              phase = "installing";
              installingSince = ctx.clock.mono();
              report(done);
              ctx.logger.info(done, "update staged: waiting for the installer");
              return done;
            } catch (err) {
              const code = isOutpostError(err) ? err.code : "OTA_DOWNLOAD_FAILED";
              if (manifest) {
                const f = files();
                // A transfer that stopped (the server gone, a timeout) keeps what arrived for a retry; anything
                // else (a refusal, corrupt or mismatching bytes) leaves nothing behind.
                if (code !== "OTA_DOWNLOAD_FAILED" && code !== "TASK_ABORTED")
                  rmSync(f.partial(manifest.sha256), { force: true });
                rmSync(f.ready(manifest.sha256), { force: true });
              }
              report({
                state: "failed",
                ...(manifest ? { version: manifest.version } : {}),
                code,
                reason: errorMessage(err),
              });
              throw err;
            } finally {
              busy = false;
            }
          },
        }),
      ],
      describe: () => ({
        version: VERSION,
        release: self ?? null,
        installer: installer(),
        unitsRevision: unitsRevision(records && dirname(records)),
        phase,
        trustedKeys: ctx.config().update.trustedKeys.length,
        last,
      }),
    };
  },
};

/** The release directory a binary runs from, `<opt>/releases/<version>-<sha12>/outpost`; none elsewhere (dist/). */
export function releaseDirOf(executable: string): string | undefined {
  const dir = dirname(executable);
  const name = basename(dir);
  return basename(dirname(dir)) === "releases" && releaseVersion(name) !== undefined ? name : undefined;
}

/** A settled journal as `P/D/update` shows it. */
function outcome(j: Journal): Record<string, unknown> {
  if (j.state === "failed") return { state: "failed", version: j.version, code: j.code, reason: j.reason };
  return {
    state: j.state,
    version: j.to.version,
    from: j.from.version,
    ...("reason" in j && j.reason !== undefined ? { reason: j.reason } : {}),
  };
}

/** How long a partial download is kept for a retry across restarts (a reboot mid-download on a metered link). */
const PARTIAL_KEEP_MS = 24 * 3600_000;

/** A staged release (`<sha256>.ready`) or a partial download (`<sha256>.partial`) in the update directory. */
const STAGED = /^[0-9a-f]{64}\.(ready|partial)$/;
const isPartial = (name: string) => STAGED.exec(name)?.[1] === "partial";

/**
 * The agent's own install request (`install.json`): its id (a restart while root has not answered yet) and the
 * staged file it names, each when it is one.
 */
function readInstall(path: string): { id?: string; ready?: string } {
  try {
    const r = JSON.parse(readFileSync(path, "utf8")) as { id?: unknown; ready?: unknown };
    return {
      ...(typeof r.id === "string" ? { id: r.id } : {}),
      ...(typeof r.ready === "string" && STAGED.exec(r.ready)?.[1] === "ready" ? { ready: r.ready } : {}),
    };
  } catch {
    return {};
  }
}

function removeStaged(install: string): void {
  const { ready } = readInstall(install);
  if (ready) rmSync(join(dirname(install), ready), { force: true });
}

/**
 * At start: a staged `.ready` that no pending install request names, and every `.partial` but the newest one
 * younger than a day (kept so a retry resumes), are removed: a failed update leaves at most one partial file,
 * for at most a day, and never a staged release nobody takes.
 */
function sweepStaging(dir: string, keepReady: string | undefined, now: number): void {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  const partials = names
    .filter(isPartial)
    .map((n) => ({ n, mtime: statSync(join(dir, n), { throwIfNoEntry: false })?.mtimeMs ?? 0 }))
    .sort((a, b) => b.mtime - a.mtime);
  const keep = partials[0] && now - partials[0].mtime < PARTIAL_KEEP_MS ? partials[0].n : undefined;
  for (const n of names) {
    const kind = STAGED.exec(n)?.[1];
    if ((kind === "ready" && n !== keepReady) || (kind === "partial" && n !== keep))
      rmSync(join(dir, n), { force: true });
  }
}

/** The revision of the update units installed beside this release (in the rollback script's header). */
function unitsRevision(opt: string | undefined): number | null {
  if (!opt) return null;
  try {
    const head = readFileSync(join(opt, "rollback"), "utf8").slice(0, 1024);
    const m = /^# outpost units revision (\d+)$/m.exec(head);
    // Scripts written before revisions were numbered carry none: that is revision 1.
    return m ? Number(m[1]) : 1;
  } catch {
    return null;
  }
}
