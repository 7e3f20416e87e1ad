#!/usr/bin/env node
// Runs the given arguments on the pinned Node runtime (targets/<host>.json), fetching it on first use.
// Every npm script goes through here so tests, build and the shipped binaries share one runtime.
import { spawn } from "node:child_process";
import { hostNode } from "./runtime.mjs";

const node = hostNode();
// onnxruntime-node's telemetry off for everything run from a checkout (the tests' in-process worker pools too);
// the binary turns it off itself (src/main.ts).
const env = { ...process.env, OUTPOST_NODE: node, ORT_DISABLE_TELEMETRY: "1" };
// npm sets this to the bootstrap node; children that look for "node" should find the pinned one.
env.npm_node_execpath = node;
const child = spawn(node, process.argv.slice(2), { stdio: "inherit", env });
// A terminal's Ctrl-C already reaches the child through the process group, and npm forwards it to us too:
// passing SIGINT on would hand the agent a second signal, which means "exit now".
process.on("SIGINT", () => {});
for (const sig of ["SIGTERM", "SIGHUP"]) {
  process.on(sig, () => child.kill(sig));
}
child.on("exit", (code, signal) => {
  if (signal) process.kill(process.pid, signal);
  else process.exit(code ?? 1);
});
