import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  type KeyObject,
} from "node:crypto";
import { OutpostError } from "../core/errors.ts";

/**
 * Diagnostics (logs, configuration, profiles) hold secrets and cross a broker that other clients read: they are
 * sealed to the operator who asked. The request names an ephemeral X25519 public key (`to`, signed with the
 * request); the device makes one of its own for the answer, derives an AES-256-GCM key with HKDF-SHA256 from
 * the shared secret, bound to the device, the request and both public keys, and seals each chunk with its
 * index and the count as associated data (a chunk cannot be moved, dropped or replayed into another answer).
 */
export const SEAL_SCHEME = "x25519-hkdf-sha256-aes-256-gcm";
const INFO = "outpost-diagnostics-v1";
const TAG_BYTES = 16;

/** The 32 bytes of an X25519 public key, base64 (as a request's `to` and an answer's `key` carry it). */
export function rawPublicKey(key: KeyObject): string {
  const jwk = key.export({ format: "jwk" });
  return Buffer.from(jwk.x ?? "", "base64url").toString("base64");
}

export function publicKeyFromRaw(raw: string): KeyObject {
  const bytes = Buffer.from(raw, "base64");
  if (bytes.length !== 32 || bytes.toString("base64") !== raw) {
    throw new OutpostError("BAD_PARAMS", "expected an X25519 public key: 32 bytes, base64");
  }
  return createPublicKey({ key: { kty: "OKP", crv: "X25519", x: bytes.toString("base64url") }, format: "jwk" });
}

/** What binds a sealed answer: whose it is and which request it answers. */
export interface SealBinding {
  device: string;
  request: string;
}

function sealKey(mine: KeyObject, theirs: KeyObject, devicePublic: string, to: string, bind: SealBinding): Buffer {
  let shared: Buffer;
  try {
    shared = diffieHellman({ privateKey: mine, publicKey: theirs });
  } catch {
    // A low-order point (all zeros, ...): no shared secret, and nothing sealed to it could be read.
    throw new OutpostError("BAD_PARAMS", "the X25519 key gives no shared secret");
  }
  const salt = createHash("sha256")
    .update(JSON.stringify([bind.device, bind.request]))
    .digest();
  return Buffer.from(hkdfSync("sha256", shared, salt, `${INFO}\n${devicePublic}\n${to}`, 32));
}

const nonce = (index: number) => {
  const n = Buffer.alloc(12);
  n.writeUInt32BE(index, 8);
  return n;
};
const aad = (bind: SealBinding, index: number, count: number) =>
  Buffer.from(JSON.stringify([bind.device, bind.request, index, count]), "utf8");

/** Seals `plain` to the key `to`, cut into chunks of at most `chunkBytes` of ciphertext (tag included). */
export function seal(
  plain: Uint8Array,
  to: string,
  bind: SealBinding,
  chunkBytes: number,
): { key: string; chunks: Buffer[] } {
  const recipient = publicKeyFromRaw(to);
  const { privateKey, publicKey } = generateKeyPairSync("x25519");
  const key = rawPublicKey(publicKey);
  const aes = sealKey(privateKey, recipient, key, to, bind);
  const piece = chunkBytes - TAG_BYTES;
  const count = Math.max(1, Math.ceil(plain.length / piece));
  const chunks: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    const cipher = createCipheriv("aes-256-gcm", aes, nonce(i));
    cipher.setAAD(aad(bind, i, count));
    const body = Buffer.concat([cipher.update(plain.subarray(i * piece, (i + 1) * piece)), cipher.final()]);
    chunks.push(Buffer.concat([body, cipher.getAuthTag()]));
  }
  return { key, chunks };
}

/** Opens what `seal` made with the private key whose public half was `to`; throws on any change. */
export function open(
  chunks: readonly Uint8Array[],
  mine: { privateKey: KeyObject; to: string },
  devicePublic: string,
  bind: SealBinding,
): Buffer {
  const aes = sealKey(mine.privateKey, publicKeyFromRaw(devicePublic), devicePublic, mine.to, bind);
  return Buffer.concat(
    chunks.map((chunk, i) => {
      if (chunk.length < TAG_BYTES) throw new OutpostError("DIAG_INVALID", `chunk ${i} is too short`);
      const decipher = createDecipheriv("aes-256-gcm", aes, nonce(i));
      decipher.setAAD(aad(bind, i, chunks.length));
      decipher.setAuthTag(chunk.subarray(chunk.length - TAG_BYTES));
      try {
        return Buffer.concat([decipher.update(chunk.subarray(0, chunk.length - TAG_BYTES)), decipher.final()]);
      } catch {
        throw new OutpostError("DIAG_INVALID", `chunk ${i} does not open with this request's key`);
      }
    }),
  );
}
