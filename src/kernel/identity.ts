import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from "node:crypto";
import {
  closeSync,
  constants,
  fchmodSync,
  fstatSync,
  mkdirSync,
  openSync,
  readSync,
  renameSync,
  rmSync,
  statfsSync,
} from "node:fs";
import { join } from "node:path";
import { fingerprintOf, publicKeyText } from "../commands/keys.ts";

export { fingerprintOf };

import { errorMessage } from "../core/errors.ts";
import { writeFileAtomically } from "../core/files.ts";
import type { Logger } from "../core/logger.ts";

/** The device's private key in the state directory: PKCS#8 PEM, mode 0600, the service user's. */
export const DEVICE_KEY_FILE = "device.key";
/** Its public half, one line `ed25519:<base64>`: what `install` prints the fingerprint of. */
export const DEVICE_PUB_FILE = "device.pub";
/** Either file is a few hundred bytes; anything larger is not one. */
export const MAX_KEY_FILE = 4096;
/** statfs types of a tmpfs and a ramfs: a state directory on either does not survive a reboot. */
const IN_MEMORY = new Set([0x01021994, 0x858458f6]);
const OPEN_READ = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/** Who this device is: its own ed25519 key, made at its first start and kept in the state directory. */
export interface DeviceIdentity {
  /** Held as a key object only: the PEM text is not kept in memory. */
  readonly privateKey: KeyObject;
  /** `ed25519:<base64>`, the form operators' keys take too. */
  readonly publicKey: string;
  /** `SHA256:<base64>`, as ssh prints a host key's (fingerprintOf): what an operator pins. */
  readonly fingerprint: string;
  /** Made by this start (the first, or a state directory that was emptied). */
  readonly created: boolean;
  /**
   * The key will not be the same at the next start or boot: the state directory is a tmpfs, or the key could
   * not be stored there (read-only, full). Every operator's pin of it then fails; the agent runs all the same.
   */
  readonly ephemeral: boolean;
}

/**
 * The device's key: read from `stateDir`, or made there at the first start. A key file that is not one (a
 * link, not a regular file, too large, unreadable as a key) is moved aside and a new key made, with an error
 * logged: operators then see a new fingerprint and must pin it again, which is what a device whose identity
 * was tampered with deserves. Never called by `install --root`: an image would give every device one key.
 */
export function deviceIdentity(stateDir: string, logger: Logger): DeviceIdentity {
  const path = join(stateDir, DEVICE_KEY_FILE);
  try {
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  } catch (err) {
    // The agent runs without a state directory (outbox in memory, commands that change state refused): it
    // must not be the key that stops it. The key is then the process's own.
    logger.error(
      { err: errorMessage(err), stateDir },
      "the state directory cannot be made: the device key is not kept",
    );
  }
  const tmpfs = onTmpfs(stateDir);
  let ephemeral = tmpfs;
  let privateKey: KeyObject | undefined;
  let created = false;
  const pem = readKeyFile(path, logger);
  if (pem !== undefined) {
    try {
      privateKey = createPrivateKey(pem);
      if (privateKey.asymmetricKeyType !== "ed25519") throw new Error(`a ${privateKey.asymmetricKeyType} key`);
    } catch (err) {
      privateKey = undefined;
      moveAside(path, `not an ed25519 private key (${errorMessage(err)})`, logger);
    }
  }
  if (!privateKey) {
    const pair = generateKeyPairSync("ed25519");
    privateKey = pair.privateKey;
    created = true;
    if (!store(path, privateKey.export({ format: "pem", type: "pkcs8" }).toString(), 0o600, logger)) ephemeral = true;
  }
  const publicKey = publicKeyText(createPublicKey(privateKey));
  // Written at every start: the public half is derived, and a stale or planted one must not outlive a restart.
  store(join(stateDir, DEVICE_PUB_FILE), `${publicKey}\n`, 0o644, logger);
  const fingerprint = fingerprintOf(publicKey);
  if (created) logger.info({ fingerprint }, "device key made: operators pin this fingerprint");
  if (tmpfs) {
    logger.warn(
      { stateDir, fingerprint },
      "the state directory is in memory (tmpfs, ramfs): the device key is new at every boot, and every operator's pin of it fails after one",
    );
  }
  return { privateKey, publicKey, fingerprint, created, ephemeral };
}

/** The key file's text, read through one checked descriptor; undefined when there is none or it is not one. */
function readKeyFile(path: string, logger: Logger): string | undefined {
  let fd: number;
  try {
    fd = openSync(path, OPEN_READ);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return undefined;
    moveAside(path, `cannot be opened safely (${code ?? "error"})`, logger);
    return undefined;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.size > MAX_KEY_FILE) {
      moveAside(path, st.isFile() ? `${st.size} bytes` : "not a regular file", logger);
      return undefined;
    }
    // Readable by others (copied in by hand, a umask): the agent's own file, made private again if it can.
    if ((st.mode & 0o077) !== 0) {
      const mode = (st.mode & 0o777).toString(8);
      try {
        fchmodSync(fd, 0o600);
        logger.warn({ file: path, mode }, "the device key was readable by others: now 0600");
      } catch (err) {
        logger.error(
          { file: path, mode, err: errorMessage(err) },
          "the device key is readable by others; fix its mode",
        );
      }
    }
    const buffer = Buffer.alloc(st.size);
    let done = 0;
    while (done < st.size) {
      const n = readSync(fd, buffer, done, st.size - done, done);
      if (n === 0) break;
      done += n;
    }
    return buffer.subarray(0, done).toString("utf8");
  } finally {
    closeSync(fd);
  }
}

function moveAside(path: string, why: string, logger: Logger): void {
  const aside = `${path}.bad-${Date.now()}`;
  try {
    renameSync(path, aside);
  } catch {
    // Gone already, or not movable: the new key is written over the name all the same (a rename replaces it).
  }
  logger.error({ file: path, movedTo: aside, why }, "the device key is not usable: a new one is made");
}

/**
 * Writes a file durably (temp file, fsync, rename, fsync of the directory); false, logged, when it cannot be
 * (a read-only or full state directory): the key then lives in memory only, and the agent runs on.
 */
function store(path: string, text: string, mode: number, logger: Logger): boolean {
  try {
    writeFileAtomically(path, text, mode);
    return true;
  } catch (err) {
    try {
      rmSync(`${path}.tmp`, { force: true });
    } catch {
      // Nothing could be written there either.
    }
    logger.error(
      { file: path, err: errorMessage(err) },
      "cannot write the device key: it is new at every start until this is fixed",
    );
    return false;
  }
}

function onTmpfs(dir: string): boolean {
  try {
    return IN_MEMORY.has(statfsSync(dir).type);
  } catch {
    return false;
  }
}
