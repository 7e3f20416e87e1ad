import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from "node:crypto";
import { OutpostError } from "../core/errors.ts";

/** Text form of a public key: `ed25519:` and the 32 raw key bytes in standard base64, on one line. */
export const PUBLIC_KEY_PREFIX = "ed25519:";

export interface KeyPair {
  /** PKCS#8 PEM, what `outpost keygen` writes to PREFIX.key. */
  privatePem: string;
  /** `ed25519:<base64>`, what PREFIX.pub holds and `commands.trustedKeys[].key` takes. */
  publicText: string;
}

export function generateKeys(): KeyPair {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  return {
    privatePem: privateKey.export({ format: "pem", type: "pkcs8" }).toString(),
    publicText: publicKeyText(publicKey),
  };
}

export function publicKeyText(key: KeyObject): string {
  const jwk = key.export({ format: "jwk" });
  if (jwk.crv !== "Ed25519" || typeof jwk.x !== "string") {
    throw new OutpostError("KEY_INVALID", "not an ed25519 key");
  }
  return `${PUBLIC_KEY_PREFIX}${Buffer.from(jwk.x, "base64url").toString("base64")}`;
}

/**
 * Reads a public key given as `ed25519:<base64>`, bare base64 of the 32 raw bytes, or SPKI PEM.
 * Throws KEY_INVALID naming what was wrong.
 */
export function parsePublicKey(text: string): KeyObject {
  const trimmed = text.trim();
  if (trimmed.startsWith("-----BEGIN")) return ed25519(() => createPublicKey(trimmed), "public");
  const b64 = trimmed.startsWith(PUBLIC_KEY_PREFIX) ? trimmed.slice(PUBLIC_KEY_PREFIX.length) : trimmed;
  const raw = /^[A-Za-z0-9+/]+={0,2}$/.test(b64) ? Buffer.from(b64, "base64") : Buffer.alloc(0);
  if (raw.length !== 32) {
    throw new OutpostError("KEY_INVALID", 'expected "ed25519:" and the base64 of 32 key bytes');
  }
  return createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: raw.toString("base64url") }, format: "jwk" });
}

/** Reads a PKCS#8 PEM ed25519 private key (what `outpost keygen` writes). */
export function parsePrivateKey(pem: string): KeyObject {
  return ed25519(() => createPrivateKey(pem), "private");
}

function ed25519(read: () => KeyObject, kind: "public" | "private"): KeyObject {
  let key: KeyObject;
  try {
    key = read();
  } catch (err) {
    throw new OutpostError("KEY_INVALID", `not a readable PEM ${kind} key`, { cause: err });
  }
  if (key.asymmetricKeyType !== "ed25519") {
    throw new OutpostError("KEY_INVALID", `expected an ed25519 key, found ${key.asymmetricKeyType}`);
  }
  return key;
}

/**
 * `SHA256:<base64, no padding>` of a public key (`ed25519:<base64>`) as ssh computes it: over the key's
 * OpenSSH wire form (`ssh-ed25519` and the 32 bytes, each length-prefixed), so that `ssh-keygen -l` prints the
 * same fingerprint for the same key.
 */
export function fingerprintOf(publicKey: string): string {
  const raw = Buffer.from(publicKey.replace(/^ed25519:/, ""), "base64");
  const field = (b: Buffer) => {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(b.length);
    return Buffer.concat([length, b]);
  };
  const blob = Buffer.concat([field(Buffer.from("ssh-ed25519")), field(raw)]);
  return `SHA256:${createHash("sha256").update(blob).digest("base64").replace(/=+$/, "")}`;
}
