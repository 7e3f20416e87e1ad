// Issue 25, item 1: the device's own key, made at its first start in the state directory, kept across starts,
// never read through a link, and its fingerprint the one ssh would print for the same key.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import {
  chmodSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import pino from "pino";
import { DEVICE_KEY_FILE, DEVICE_PUB_FILE, deviceIdentity, fingerprintOf } from "../../src/kernel/identity.ts";
import { deviceKey } from "../../src/service/install.ts";
import { tempDir } from "../helpers/temp.ts";

const logger = pino({ level: "silent" });

/** The same key as an OpenSSH public key line, for ssh-keygen to fingerprint. */
function opensshLine(publicKey: string): string {
  const raw = Buffer.from(publicKey.replace(/^ed25519:/, ""), "base64");
  const field = (b: Buffer) => Buffer.concat([Buffer.from([0, 0, 0, b.length]), b]);
  return `ssh-ed25519 ${Buffer.concat([field(Buffer.from("ssh-ed25519")), field(raw)]).toString("base64")} device`;
}

describe("the device key", () => {
  it("is made at the first start (0600, its public half 0644) and kept at the next", () => {
    const dir = join(tempDir("outpost-identity-"), "state");
    const first = deviceIdentity(dir, logger);
    assert.equal(first.created, true);
    assert.match(first.publicKey, /^ed25519:[A-Za-z0-9+/]{43}=$/);
    assert.match(first.fingerprint, /^SHA256:[A-Za-z0-9+/]{43}$/);
    assert.equal(statSync(join(dir, DEVICE_KEY_FILE)).mode & 0o777, 0o600);
    assert.equal(statSync(join(dir, DEVICE_PUB_FILE)).mode & 0o777, 0o644);
    assert.equal(readFileSync(join(dir, DEVICE_PUB_FILE), "utf8"), `${first.publicKey}\n`);
    const again = deviceIdentity(dir, logger);
    assert.equal(again.created, false);
    assert.equal(again.fingerprint, first.fingerprint);
    assert.equal(first.privateKey.type, "private", "held as a key object");
  });

  it("has the fingerprint ssh-keygen prints for the same key", () => {
    const dir = tempDir("outpost-identity-");
    const { publicKey, fingerprint } = deviceIdentity(dir, logger);
    const file = join(dir, "device.ssh.pub");
    writeFileSync(file, `${opensshLine(publicKey)}\n`);
    const printed = execFileSync("ssh-keygen", ["-l", "-E", "sha256", "-f", file], { encoding: "utf8" });
    assert.equal(printed.split(" ")[1], fingerprint);
    assert.equal(fingerprintOf(publicKey), fingerprint);
  });

  it("is never read through a link: a planted symlink is moved aside and a new key made; the target is untouched", () => {
    const dir = tempDir("outpost-identity-");
    const other = join(tempDir("outpost-identity-other-"), "secret.pem");
    writeFileSync(other, "someone else's file\n");
    symlinkSync(other, join(dir, DEVICE_KEY_FILE));
    const id = deviceIdentity(dir, logger);
    assert.equal(id.created, true);
    assert.equal(readFileSync(other, "utf8"), "someone else's file\n");
    assert.ok(statSync(join(dir, DEVICE_KEY_FILE)).isFile());
    assert.ok(readdirSync(dir).some((n) => n.startsWith(`${DEVICE_KEY_FILE}.bad-`)));
  });

  it("a file that is not a key is moved aside, and one readable by others is made private again", () => {
    const dir = tempDir("outpost-identity-");
    writeFileSync(join(dir, DEVICE_KEY_FILE), "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n");
    assert.equal(deviceIdentity(dir, logger).created, true);
    const kept = deviceIdentity(dir, logger).fingerprint;
    chmodSync(join(dir, DEVICE_KEY_FILE), 0o644);
    assert.equal(deviceIdentity(dir, logger).fingerprint, kept);
    assert.equal(statSync(join(dir, DEVICE_KEY_FILE)).mode & 0o777, 0o600);
    assert.equal(existsSync(join(dir, `${DEVICE_PUB_FILE}.tmp-${process.pid}`)), false);
  });
});

describe("a state directory in memory", () => {
  it("on a tmpfs (/dev/shm here) the key is said to be new at every boot", { skip: !existsSync("/dev/shm") }, () => {
    const dir = mkdtempSync(join("/dev/shm", "outpost-identity-"));
    try {
      assert.equal(deviceIdentity(dir, logger).ephemeral, true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("install reads the fingerprint as root reads what the agent wrote", () => {
  const uid = process.getuid?.() ?? 0;

  it("gives the agent's fingerprint, and nothing before the agent made its key", () => {
    const dir = tempDir("outpost-identity-");
    assert.equal(deviceKey(dir, uid), undefined);
    const { fingerprint } = deviceIdentity(dir, logger);
    assert.equal(deviceKey(dir, uid)?.fingerprint, fingerprint);
  });

  it("never follows a link planted as device.pub, nor reads another user's directory", () => {
    const dir = tempDir("outpost-identity-");
    const elsewhere = join(tempDir("outpost-identity-other-"), "planted.pub");
    writeFileSync(elsewhere, `${deviceIdentity(tempDir("outpost-identity-"), logger).publicKey}\n`);
    symlinkSync(elsewhere, join(dir, DEVICE_PUB_FILE));
    assert.throws(() => deviceKey(dir, uid), /cannot be opened safely/);
    assert.throws(() => deviceKey(dir, uid + 1), /is not a directory of uid/);
  });
});

describe("found by review: the key never stops the agent", () => {
  it("a state directory that cannot be written gives a key in memory, said to be new at every start", () => {
    const file = join(tempDir("outpost-identity-"), "a-file");
    writeFileSync(file, "not a directory\n");
    const id = deviceIdentity(join(file, "state"), logger);
    assert.equal(id.ephemeral, true);
    assert.equal(id.created, true);
    assert.match(id.fingerprint, /^SHA256:/);
  });
});
