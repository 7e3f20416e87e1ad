import type { Commands } from "../commands/commands.ts";
import { abortPromise, type Component } from "../core/lifecycle.ts";
import type { Logger } from "../core/logger.ts";
import type { MqttLink } from "../mqtt/link.ts";
import type { Outbox } from "../outbox/outbox.ts";
import type { Module, ModuleParts } from "./module.ts";

/** Kept from the shutdown budget for the outbox commit, `offline` and closing (at most 30 % of the budget). */
const STOP_RESERVE_MS = 2000;

export interface StopParts {
  commands: Commands;
  /** In start order; stopped in reverse. */
  modules: readonly { module: Module; parts: ModuleParts }[];
  outbox: Outbox;
  link: MqttLink;
  /** The components started, in order. */
  started: readonly Component[];
  /** Ends the kernel's own loops (after the outbox commit). */
  abort(): void;
  logger: Logger;
  trace(step: string): void;
  /** The monotonic clock, in ms. */
  now(): number;
}

/**
 * The documented stop order within one budget (`shutdown.deadline`): quiesce intake (commands, then modules in
 * reverse), drain modules in reverse, flush the outbox, commit it, publish `offline` and disconnect, stop the
 * module components in reverse, close the outbox. The drain and the flush get what is left of the budget but a
 * reserve, which the commit, `offline` and the closing steps keep however long the drain would have taken.
 */
export async function stopInOrder(p: StopParts, budgetMs: number): Promise<void> {
  const { logger } = p;
  const reversed = [...p.modules].reverse();
  // One owner of the budget. The reserve is kept for the outbox commit, `offline` and the closing steps;
  // the drain and the flush share the rest, each getting what the steps before it left.
  const end = p.now() + budgetMs;
  const reserve = Math.min(STOP_RESERVE_MS, budgetMs * 0.3);
  const left = () => Math.max(0, Math.floor(end - reserve - p.now()));
  // A failing step must not keep the ones after it from running.
  const step = async (name: string, fn: () => unknown) => {
    p.trace(name);
    try {
      await fn();
    } catch (err) {
      logger.error({ err, step: name }, "stop step failed");
    }
  };
  // A drain step that outlasts the budget is left behind (a command or task stuck in native code, a bug):
  // what it would have done is lost, what everything else must do is not.
  const bounded = async (name: string, work: unknown, signal: AbortSignal) => {
    const cut = await Promise.race([Promise.resolve(work).then(() => false), abortPromise(signal).then(() => true)]);
    if (cut) logger.warn({ step: name }, "stop step cut short: the shutdown budget is spent");
  };
  await step("quiesce:commands", () => p.commands.quiesce());
  for (const { module, parts } of reversed) await step(`quiesce:${module.name}`, () => parts.quiesce?.());
  const drain = AbortSignal.timeout(left());
  await step("drain:commands", () => bounded("drain:commands", p.commands.stop(), drain));
  for (const { module, parts } of reversed) {
    await step(`drain:${module.name}`, () => bounded(`drain:${module.name}`, parts.drain?.(drain), drain));
  }
  await step("flush:outbox", async () => {
    if (!p.link.connected) return;
    const flushSignal = AbortSignal.timeout(left());
    await p.outbox.flush(flushSignal);
    if (flushSignal.aborted) logger.warn({ queued: p.outbox.stats().queued }, "outbox not flushed in time");
  });
  // What is still unacknowledged goes to disk before anything else can hang.
  await step("commit:outbox", () => p.outbox.commit());
  p.abort();
  // The link publishes "offline" and disconnects; then module components, then the outbox closes.
  await step("offline+disconnect:mqtt", () => p.link.stop());
  for (const component of [...p.started].reverse()) {
    if (component === p.link || component === p.outbox || component === p.commands) continue;
    await step(`stop:${component.name}`, () => component.stop());
  }
  await step("stop:outbox", () => p.outbox.stop());
}
