import type { KeyObject } from "node:crypto";
import { EVERY_DEVICE } from "../mqtt/topics.ts";
import { type CommandRequest, requestSchema, signedEnvelopeSchema, verifyEnvelope } from "./envelope.ts";
import { parsePublicKey } from "./keys.ts";
import { allows, describe, Refused } from "./rules.ts";
import type { Caller, CommandPolicy, TrustedKey } from "./types.ts";

interface Route {
  name: string;
}

/**
 * Checks a signed request: envelope, trusted key, signature, then (authenticated) payload, command, target,
 * validity window and the key's allow list. Throws Refused with the first check that fails.
 */
export class Verifier {
  private readonly deviceId: string;
  private readonly groups: readonly string[];
  /**
   * For the trusted keys in force: each entry's raw key, and each key text a request offered that matched one
   * (so that a command parses no key). Only texts that signed a request are kept, and at most 64.
   */
  private keyCache: {
    keys: readonly TrustedKey[];
    parsed: Map<string, { entry: TrustedKey; raw: string }>;
    offered: Map<string, { entry: TrustedKey; publicKey: KeyObject }>;
  } = { keys: [], parsed: new Map(), offered: new Map() };

  constructor(deviceId: string, groups: readonly string[]) {
    this.deviceId = deviceId;
    this.groups = groups;
  }

  verify(
    raw: unknown,
    policy: CommandPolicy,
    route: Route,
    now: number,
    authenticated: () => void,
  ): CommandRequest & { caller: Caller } {
    const envelope = signedEnvelopeSchema.safeParse(raw);
    if (!envelope.success) throw new Refused("BAD_REQUEST", describe(envelope.error));
    // Parsed once, before the signature is checked: until then only its id is used, to label the reply.
    let body: unknown;
    let parseError = false;
    try {
      body = JSON.parse(envelope.data.payload);
    } catch {
      parseError = true;
    }
    const maybeId = (body as { id?: unknown } | null | undefined)?.id;
    const claimedId = typeof maybeId === "string" ? maybeId.slice(0, 128) : undefined;
    const trusted = this.trustedKey(envelope.data.key, policy);
    if (!trusted)
      throw new Refused("KEY_UNKNOWN", "the request is signed by a key this device does not trust", claimedId);
    if (!verifyEnvelope(envelope.data, trusted.publicKey)) {
      throw new Refused("SIGNATURE_INVALID", "the signature does not match the payload and key", claimedId);
    }
    // Kept only once it signed: spellings of a trusted key (spaces, the prefix) sent with a bad signature must
    // not fill the cache.
    const offered = this.keyCache.offered;
    if (offered.size < 64 && !offered.has(envelope.data.key)) offered.set(envelope.data.key, trusted);
    authenticated();
    if (parseError) throw new Refused("BAD_REQUEST", "the signed payload is not JSON", claimedId);
    const parsed = requestSchema.safeParse(body);
    if (!parsed.success) throw new Refused("BAD_REQUEST", describe(parsed.error), claimedId);
    const request = parsed.data;
    const { id } = request;
    if (request.command !== route.name) {
      throw new Refused("BAD_REQUEST", `signed for ${request.command}, published on the ${route.name} topic`, id);
    }
    const forUs =
      request.device === this.deviceId ||
      (request.group !== undefined && (this.groups.includes(request.group) || request.group === EVERY_DEVICE));
    if (!forUs) {
      const target = request.device ?? `group ${request.group}`;
      throw new Refused("WRONG_DEVICE", `signed for ${target}, not for this device`, id);
    }
    if (request.expiresAt - request.issuedAt > policy.maxValidityMs) {
      throw new Refused("BAD_REQUEST", `valid for longer than commands.maxValidity (${policy.maxValidityMs}ms)`, id);
    }
    if (request.issuedAt > now + policy.skewMs) {
      throw new Refused("COMMAND_NOT_YET_VALID", `issued ${request.issuedAt - now}ms in the future`, id);
    }
    if (request.expiresAt + policy.skewMs < now) {
      throw new Refused("COMMAND_EXPIRED", `expired ${now - request.expiresAt}ms ago`, id);
    }
    if (!allows(trusted.entry.allow, request.command)) {
      throw new Refused("KEY_NOT_ALLOWED", `key ${trusted.entry.name} may not run ${request.command}`, id);
    }
    return { ...request, caller: { key: trusted.entry.name, allow: trusted.entry.allow } };
  }

  private trustedKey(text: string, policy: CommandPolicy): { entry: TrustedKey; publicKey: KeyObject } | undefined {
    if (this.keyCache.keys !== policy.trustedKeys) {
      this.keyCache = { keys: policy.trustedKeys, parsed: new Map(), offered: new Map() };
    }
    const matched = this.keyCache.offered.get(text);
    if (matched) return matched;
    let offered: KeyObject;
    try {
      offered = parsePublicKey(text);
    } catch {
      return undefined;
    }
    const raw = rawKey(offered);
    for (const entry of policy.trustedKeys) {
      let known = this.keyCache.parsed.get(entry.key);
      if (!known) {
        try {
          known = { entry, raw: rawKey(parsePublicKey(entry.key)) };
        } catch {
          continue;
        }
        this.keyCache.parsed.set(entry.key, known);
      }
      if (known.raw === raw) return { entry, publicKey: offered };
    }
    return undefined;
  }
}

function rawKey(key: KeyObject): string {
  return String(key.export({ format: "jwk" }).x);
}
