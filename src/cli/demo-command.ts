import { closeSync, existsSync, mkdtempSync, openSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { type AddressInfo, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Aedes } from "aedes";
import mqtt from "mqtt";
import { stringify } from "yaml";
import { createAgent } from "../agent.ts";
import { generateKeys } from "../commands/keys.ts";
import { parseDuration } from "../config/duration.ts";
import { liveSecrets } from "../config/redact.ts";
import { sleep, systemClock } from "../core/clock.ts";
import { errorMessage } from "../core/errors.ts";
import { createLogger } from "../core/logger.ts";
import { allDevices } from "../mqtt/topics.ts";
import { openConfigStore } from "../schema.ts";
import { demoFiles, demoTask } from "../tasks/demo.ts";
import { EXIT, type Host, me, UsageError } from "./host.ts";
import { brokerId, KnownDevices } from "./known-devices.ts";
import { applyMessage, type DeviceView, viewUpdate } from "./view.ts";

export interface DemoOptions {
  port?: number;
  interval?: string;
}

/**
 * `outpost demo`: an embedded broker (aedes, MQTT 3.1.1) on a free localhost port, the agent connected to
 * it, and a live view of what the device publishes. Needs nothing installed.
 */
export async function demoCommand(host: Host, options: DemoOptions): Promise<number> {
  // Checked before anything is started or written: a typo in a flag must leave nothing behind.
  const interval = options.interval ?? "1s";
  if (parseDuration(interval) === undefined) {
    throw new UsageError(`demo: --interval expects a duration like 500ms or 2s, not ${JSON.stringify(interval)}`);
  }
  const broker = await Aedes.createBroker();
  const server = createServer(broker.handle);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, "127.0.0.1", () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const stateDir = mkdtempSync(join(tmpdir(), "outpost-demo-"));
  const logFile = join(stateDir, "agent.log");
  const logFd = openSync(logFile, "a");

  // A throw-away operator key, so that signed commands can be tried at once with `outpost ctl call`.
  const keys = generateKeys();
  const keyFile = join(stateDir, "demo.key");
  writeFileSync(keyFile, keys.privatePem, { mode: 0o600 });

  // The shipped model inspects the sample images a pretend camera drops into a watched folder.
  const demo = demoFiles();
  const model = join(stateDir, "parts.onnx");
  writeFileSync(model, demo.model);
  const camera = join(stateDir, "camera");

  // The demo's config is a file in its state directory, read by the same loader as `run`: the environment can
  // still override it, and `config.set` changes it as on a device (an environment variable would shadow it).
  const demoConfig = join(stateDir, "demo.yaml");
  writeFileSync(
    demoConfig,
    stringify({
      // The embedded broker (aedes) speaks 3.1.1 only: no fallback warning about our own broker.
      mqtt: { url: `mqtt://127.0.0.1:${port}`, protocolVersion: 4 },
      telemetry: { interval },
      state: { dir: stateDir },
      commands: { trustedKeys: [{ name: "demo", key: keys.publicText, allow: ["*"] }] },
      tasks: { workers: 1, define: { inspect: demoTask(model, camera) } },
    }),
  );
  const open = () => openConfigStore({ path: demoConfig, required: true, hostname: host.hostname, env: host.env });
  let configStore = open();
  const { config } = configStore.current();
  const { logger, flush, setLevel, ring } = await createLogger({
    level: config.log.level,
    format: "json",
    fd: logFd,
    secrets: liveSecrets(configStore),
  });
  const boot = () => createAgent({ configStore, logger, setLogLevel: setLevel, logRing: ring, clock: systemClock });
  let agent = boot();
  // The demo pins its own device, as deploy.sh pins a deployed one: ctl then counts its signed answers.
  const knownDevices = join(stateDir, "known_devices");
  const pins = KnownDevices.load(knownDevices);
  pins.pin({
    broker: brokerId(`mqtt://127.0.0.1:${port}`),
    prefix: config.mqtt.topicPrefix,
    device: config.device.id,
    key: agent.identity.publicKey,
    note: "the demo's own device",
  });
  pins.save();

  const tty = host.stdout.isTTY === true;
  const devices = new Map<string, DeviceView>();
  const prefix = config.mqtt.topicPrefix;
  const header = [
    `outpost demo: embedded broker on mqtt://127.0.0.1:${port} (MQTT 3.1.1), agent log ${logFile}`,
    `watch it from another terminal: mosquitto_sub -p ${port} -t '${prefix}/#' -v      Ctrl-C stops`,
    `command it: ${me(host)} ctl call --broker mqtt://127.0.0.1:${port} --key ${keyFile} --known-devices ${knownDevices} ${config.device.id} describe`,
    `or set once in a shell: export OUTPOST_CTL_BROKER=mqtt://127.0.0.1:${port} OUTPOST_CTL_KEY=${keyFile} OUTPOST_CTL_KNOWN_DEVICES=${knownDevices}`,
  ];
  if (!tty) host.stdout.write(`${header.join("\n")}\n`);

  // Without mqtt-packet's number cache, as every client of ours (mqtt/options.ts): the first packet would make it.
  const viewer = mqtt.connect({
    host: "127.0.0.1",
    port,
    protocolVersion: 4,
    reconnectPeriod: 1000,
    writeCache: false,
  });
  viewer.on("error", (err) => logger.warn({ err: errorMessage(err) }, "demo viewer error"));
  viewer.on("connect", () => {
    viewer.subscribe(
      [
        allDevices(prefix, "status"),
        allDevices(prefix, "telemetry"),
        allDevices(prefix, "telemetry/full"),
        `${prefix}/+/results/+`,
      ],
      { qos: 0 },
    );
  });
  viewer.on("message", (topic, payload) => {
    try {
      const seen = applyMessage(devices, prefix, topic, payload);
      if (!seen) return;
      host.stdout.write(viewUpdate(devices, seen, tty, header));
    } catch (err) {
      logger.warn({ err: errorMessage(err), topic }, "demo viewer could not show a message");
    }
  });

  const cameraStop = new AbortController();
  let code: number = EXIT.OK;
  try {
    await agent.start();
    const dropping = dropSamples(camera, demo.samples, cameraStop.signal);
    // Closing the terminal (SIGHUP) stops the demo like Ctrl-C: offline published, temp dir removed, exit 0.
    let unhook = () => {};
    const hangup = new Promise<void>((resolve) => {
      unhook = host.onHangup(resolve);
    });
    const stop = Promise.race([host.stopRequested, hangup]).then(() => "stop" as const);
    // The `restart` command: on a device systemd starts the agent again; here the demo does, in place (same
    // broker, state and view), and the new agent sends the restart's final reply, as a device's would.
    while ((await Promise.race([stop, agent.restartRequested.then(() => "restart" as const)])) === "restart") {
      await agent.stop(2000);
      configStore = open();
      agent = boot();
      await agent.start();
    }
    unhook();
    cameraStop.abort();
    await dropping;
    await agent.stop(2000);
  } catch (err) {
    host.stderr.write(`outpost demo: ${errorMessage(err)}\n`);
    code = EXIT.FAILURE;
    // A start that failed (the first, or one after a restart) leaves nothing running behind.
    cameraStop.abort();
    await agent.stop(2000).catch(() => {});
  } finally {
    await viewer.endAsync(true);
    await new Promise<void>((resolve) => broker.close(() => resolve()));
    await new Promise<void>((resolve) => server.close(() => resolve()));
    flush();
    closeSync(logFd);
    rmSync(stateDir, { recursive: true, force: true });
    host.stdout.write("outpost demo: stopped\n");
  }
  return code;
}

/** A pretend camera: one sample image every 2 s, written beside the inbox and renamed in, as a camera should. */
async function dropSamples(folder: string, samples: { name: string; bytes: Uint8Array }[], signal: AbortSignal) {
  for (let i = 0; !signal.aborted; i++) {
    const sample = samples[i % samples.length];
    try {
      if (sample && existsSync(join(folder, "inbox"))) {
        const name = `${String(i).padStart(5, "0")}-${sample.name}`;
        writeFileSync(join(folder, `.${name}`), sample.bytes);
        renameSync(join(folder, `.${name}`), join(folder, "inbox", name));
      }
    } catch {
      // A demo's camera: a frame that cannot be written is skipped.
    }
    await sleep(i === 0 ? 300 : 2000, signal);
  }
}
