/**
 * Every error code of the agent, declared once with its meaning. Codes marked `wire` go out in command
 * replies (and `docs/mqtt-api.md#error-codes` is generated from this table: `npm run docs:codes`); the others
 * appear only in logs and exit messages. `OutpostError` takes only codes declared here.
 */
export const CODES = {
  // Command refusals: a `failed` reply, nothing ran.
  BAD_REQUEST: {
    wire: true,
    meaning: "not JSON, a field missing or malformed, signed for another command's topic, or valid too long",
  },
  REQUEST_TOO_LARGE: { wire: true, meaning: "the request is larger than the command accepts (checked before parsing)" },
  COMMAND_UNSIGNED: { wire: true, meaning: "no signature, and commands.allowUnsigned is false" },
  KEY_UNKNOWN: { wire: true, meaning: "signed by a key that is not in commands.trustedKeys" },
  SIGNATURE_INVALID: { wire: true, meaning: "the signature does not verify over the signed bytes" },
  WRONG_DEVICE: { wire: true, meaning: "signed for another device, or for a group this device is not in" },
  COMMAND_NOT_YET_VALID: { wire: true, meaning: "issuedAt is later than now plus commands.clockSkew" },
  COMMAND_EXPIRED: { wire: true, meaning: "expiresAt plus commands.clockSkew has passed" },
  KEY_NOT_ALLOWED: {
    wire: true,
    meaning: "the key's allow list does not have the command, or a trust change without trust.*",
  },
  NONCE_REPLAYED: { wire: true, meaning: "the nonce was accepted before: a captured request published again" },
  REQUEST_REPLAYED: { wire: true, meaning: "the request id was accepted before" },
  UNKNOWN_COMMAND: { wire: true, meaning: "no such command" },
  BAD_PARAMS: { wire: true, meaning: "params do not fit the command; the message names the path" },
  BUSY: { wire: true, meaning: "the running and waiting slots are all taken; try again" },
  REPLAY_STORE_UNAVAILABLE: {
    wire: true,
    meaning: "replay records cannot be stored, so commands that change state are refused (fail closed)",
  },
  // Outcomes of accepted commands.
  COMMAND_FAILED: { wire: true, meaning: "the command threw an error without a code of its own" },
  COMMAND_ABORTED: { wire: true, meaning: "the agent stopped before the accepted command ran" },
  CONFIG_KEY_UNKNOWN: { wire: true, meaning: "config.get: no such key" },
  CONFIG_LOCKOUT: { wire: true, meaning: "config.set: the change would leave no key that can run config.set" },
  CONFIG_NOT_STORED: { wire: true, meaning: "config.set: the change could not be written to state.dir" },
  // Tasks: the worker pool, task.run and the tasks module (docs/tasks.md).
  QUEUE_FULL: { wire: true, meaning: "the task queue is full: refused at once, nothing queued; try again" },
  CIRCUIT_OPEN: { wire: true, meaning: "this task type failed too often in a row; refused until a probe succeeds" },
  TASK_TIMEOUT: { wire: true, meaning: "the task ran past its timeout; its worker was replaced" },
  TASK_CRASHED: { wire: true, meaning: "the task's worker threw outside the task; the worker was replaced" },
  TASK_OUT_OF_MEMORY: { wire: true, meaning: "the task's worker passed its heap limit; the worker was replaced" },
  TASK_EXITED: { wire: true, meaning: "the task's worker exited (process.exit); the worker was replaced" },
  TASK_FAILED: { wire: true, meaning: "the task threw an error" },
  TASK_ABORTED: { wire: true, meaning: "the task was cancelled before it finished" },
  POOL_CLOSED: { wire: true, meaning: "the agent is stopping: the task was not run" },
  TASK_UNKNOWN: { wire: true, meaning: "no task of that name is configured" },
  TASK_INPUT_INVALID: {
    wire: true,
    meaning: "the input does not fit the task: a tensor's name, type or shape, or an image that does not decode",
  },
  TASK_INPUT_QUARANTINED: {
    wire: false,
    meaning:
      "a watched folder's frame was in flight at tasks.define.<task>.watch.quarantineAfter crashes: moved to failed/, not run again",
  },
  TASK_MODEL_INVALID: { wire: true, meaning: "the model file is missing, unreadable or not a model the runtime loads" },
  TASK_RUNTIME_UNAVAILABLE: {
    wire: true,
    meaning: "no inference runtime could be loaded (the runtime directory is not writable, or the library fails)",
  },
  // Over-the-air updates: the release manifest, the update command's checks, the download (docs/ota.md).
  OTA_MANIFEST_INVALID: { wire: true, meaning: "the release manifest is not JSON or a field is missing or malformed" },
  OTA_SIGNATURE_INVALID: { wire: true, meaning: "the release manifest's signature does not verify" },
  OTA_KEY_UNTRUSTED: { wire: true, meaning: "the release manifest is signed by a key not in update.trustedKeys" },
  OTA_DOWNLOAD_FAILED: { wire: true, meaning: "the release could not be fetched (HTTP error, timeout, short read)" },
  OTA_SIZE_MISMATCH: { wire: true, meaning: "the artifact on the server is not the size the manifest declares" },
  OTA_CHUNK_CORRUPT: { wire: true, meaning: "a fetched chunk does not match its sha256 in the chunk index" },
  OTA_HASH_MISMATCH: { wire: true, meaning: "the assembled file does not match the manifest's sha256" },
  OTA_KIND_UNSUPPORTED: {
    wire: true,
    meaning:
      "the release's kind is not what the request is for: an agent release where a task's model was named, a model release without params.task, or a task that has no model",
  },
  OTA_WRONG_ARCH: { wire: true, meaning: "the release is for another architecture" },
  OTA_DOWNGRADE: {
    wire: true,
    meaning: "the release is not newer than the running version, and its manifest allows no downgrade",
  },
  OTA_TOO_OLD: {
    wire: true,
    meaning: "the running version is older than the release's minVersion: take an intermediate release first",
  },
  OTA_TOO_LARGE: { wire: true, meaning: "the release is larger than update.maxSize" },
  OTA_DISK_FULL: { wire: true, meaning: "state.dir has not enough free space for the release" },
  OTA_BUSY: { wire: true, meaning: "another update is in progress, being installed or on trial" },
  OTA_NO_INSTALLER: {
    wire: true,
    meaning:
      "the agent does not run from the installed layout with its update units: nothing would install the release (`ctl update --until staged` only stages it)",
  },
  OTA_INSTALL_FAILED: {
    wire: true,
    meaning: "the privileged installer could not install the staged release (root's request.json says why)",
  },
  OTA_UNSAFE_RELEASE: {
    wire: true,
    meaning:
      "the release predates the root boundary (its update units would trust the agent again): root never installs it, signed downgrade or not",
  },
  OTA_STAGED_INVALID: {
    wire: true,
    meaning:
      "what the agent handed the installer is not a regular file of the service user of the declared size (a link, a FIFO, another owner), or its directory is not the service user's",
  },
  // Remote diagnostics (docs/diagnostics.md).
  DIAG_BUSY: { wire: true, meaning: "another diagnostics transfer is running on the device: one at a time" },
  DIAG_RATE_LIMITED: {
    wire: true,
    meaning: "too many diagnostics requests in a short time (10 at once, then one a second)",
  },
  DIAG_NO_WORKER: { wire: true, meaning: "no task worker with that number is running (task.list lists them)" },
  DIAG_PROFILE_FAILED: { wire: true, meaning: "the profiler could not run, or its thread did not answer in time" },
  DIAG_MEMORY_SHORT: {
    wire: true,
    meaning: "a heap snapshot needs about twice the heap free within the unit's memory limit, and there is less",
  },
  DIAG_SEND_FAILED: { wire: true, meaning: "the sealed chunks could not be published (the link dropped)" },
  // Local: logs, exit messages, the operator's own tools.
  DIAG_INVALID: {
    wire: false,
    meaning: "ctl: a diagnostics answer's chunks are missing, do not match the signed answer, or do not open",
  },
  CONFIG_INVALID: { wire: false, meaning: "the configuration does not validate; every problem is listed" },
  KEY_INVALID: { wire: false, meaning: "a key file or key text cannot be read as an ed25519 key" },
  KEY_MISSING: { wire: false, meaning: "no key was given where one is needed" },
  MQTT_OFFLINE: { wire: false, meaning: "not connected to the broker" },
  MQTT_CLOSED: { wire: false, meaning: "the connection closed before CONNACK" },
  BROKER_UNAVAILABLE: {
    wire: false,
    meaning: "ctl could not connect to the broker: refused, unreachable, or closed without a CONNACK (exit 69)",
  },
  BROKER_SPLITS_DOTS: {
    wire: false,
    meaning: "ctl: a device id or group with a dot, on a broker that turns '.' into a topic level separator (RabbitMQ)",
  },
  ABORTED: { wire: false, meaning: "stopping" },
  TIMEOUT: { wire: false, meaning: "no answer within the time allowed" },
  OUTBOX_STORAGE: { wire: false, meaning: "the outbox database cannot be opened or written" },
  OUTBOX_INVARIANT: { wire: false, meaning: "a new outbox row would not be above its class's acknowledged mark" },
  SHUTDOWN_DEADLINE: { wire: false, meaning: "the drain took longer than shutdown.deadline" },
  INSTALL_REFUSED: { wire: false, meaning: "install/uninstall: not root, or not a systemd host" },
  INSTALL_WRONG_ARCH: { wire: false, meaning: "install: the binary is for another architecture than the machine" },
} as const satisfies Record<string, { wire: boolean; meaning: string }>;

export type Code = keyof typeof CODES;

/** The codes that go out in replies, as a Markdown table (what docs/mqtt-api.md carries). */
export function codesTable(): string {
  const rows = Object.entries(CODES)
    .filter(([, c]) => c.wire)
    .map(([code, c]) => [`\`${code}\``, c.meaning]);
  // Columns padded as the formatter (Biome) writes Markdown tables, so that formatting changes nothing.
  const widths = [0, 1].map((i) => Math.max(i === 0 ? 4 : 7, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(" | ")} |`;
  return [line(["code", "meaning"]), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n");
}
