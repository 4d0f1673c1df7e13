/**
 * Sealed session tokens for the cookie rule: AES-256-GCM through node:crypto
 * (synchronous, ~1-2 µs; an awaited WebCrypto call measured ~35 µs here).
 *
 * Layout (v1), base64url in the cookie:
 *   version(1) | keyId(4) | iv(12) | ciphertext(32) | tag(16)        = 65 bytes → 87 chars
 *   plaintext: sessionKey(16) | backendKey(8) | issuedAt(4) | lastSeen(4)   (times in seconds)
 * Layout (v2), for claims that carry the pool's membership version (a rule
 * with "rebalance": "balanced", see rebalance.ts):
 *   version(1) | keyId(4) | iv(12) | ciphertext(36) | tag(16)        = 69 bytes → 92 chars
 *   plaintext: the v1 plaintext | membership(4)
 * Both open; a v1 token has no membership version.
 * Associated data: version | keyId | pool name | cookie name, so a token cannot
 * be moved to another pool or cookie. The backend key is an opaque 64-bit hash
 * of the backend id, inside the ciphertext: the cookie reveals nothing about
 * the backend, and any edit fails the tag.
 *
 * Keys rotate: the first key seals, every key opens; a token opened with an
 * older key is reported as such so the caller re-issues it under the newest.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";

const VERSION = 1;
/** Carries the membership version. */
const VERSION_2 = 2;
const HEADER = 1 + 4 + 12;
const PLAIN = 16 + 8 + 4 + 4;
const PLAIN_2 = PLAIN + 4;
const TAG = 16;
export const TOKEN_BYTES = HEADER + PLAIN + TAG;
const TOKEN_BYTES_2 = HEADER + PLAIN_2 + TAG;

export interface TokenClaims {
  /** 16 random bytes identifying the session. */
  sessionKey: Uint8Array;
  /** Opaque 64-bit backend key (see backendKey()). */
  backendKey: bigint;
  issuedAt: number;
  lastSeen: number;
  /** The pool's membership version when the session was placed (v2 tokens); absent in v1 tokens. */
  membership?: number;
}

export type OpenResult =
  | { ok: true; claims: TokenClaims /** Sealed with an older key: re-issue. */; stale: boolean }
  | { ok: false; reason: "malformed" | "bad-mac" | "unknown-key" };

interface Key {
  id: Buffer;
  /** The id as a number, for a cheap comparison against a token's bytes 1-4. */
  idNumber: number;
  secret: Buffer;
  /** Associated data for v1 and v2 tokens under this key, computed once. */
  aad: Buffer;
  aad2: Buffer;
}

/** base64url alphabet membership, for a strict character check without a regex. */
const URL_SAFE = new Uint8Array(128);
for (const c of "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
  URL_SAFE[c.charCodeAt(0)] = 1;
const TOKEN_CHARS = Math.ceil((TOKEN_BYTES * 4) / 3);
const TOKEN_CHARS_2 = Math.ceil((TOKEN_BYTES_2 * 4) / 3);

function isUrlSafe(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c > 127 || URL_SAFE[c] !== 1) return false;
  }
  return true;
}

/** A stable 4-byte key id: the first bytes of SHA-256 over the key, so ids survive reordering. */
function keyId(secret: Buffer): Buffer {
  return createHash("sha256").update("tether key id").update(secret).digest().subarray(0, 4);
}

/** Decodes a base64 (standard or url) 32-byte key; throws with a clear message otherwise. */
export function parseKey(text: string): Buffer {
  const buf = Buffer.from(text, "base64");
  if (buf.length !== 32)
    throw new Error("a cookie key must be 32 bytes, base64-encoded (tether keygen makes one)");
  return buf;
}

export const generateKey = () => randomBytes(32).toString("base64");

/** An opaque, stable 64-bit key for a backend id; it never leaves the ciphertext. */
export function backendKey(backendId: string): bigint {
  return Bun.hash.xxHash64(`tether-backend:${backendId}`);
}

export class TokenSealer {
  private readonly keys: Key[];

  constructor(secrets: readonly Buffer[], pool: string, cookieName: string) {
    if (secrets.length === 0) throw new Error("at least one key is needed");
    const tail = Buffer.from(`\0${pool}\0${cookieName}`);
    this.keys = secrets.map((secret) => {
      const id = keyId(secret);
      return {
        id,
        idNumber: id.readUInt32BE(0),
        secret,
        aad: Buffer.concat([Buffer.from([VERSION]), id, tail]),
        aad2: Buffer.concat([Buffer.from([VERSION_2]), id, tail]),
      };
    });
  }

  /** A v2 token when the claims carry a membership version, else a v1 token. */
  seal(claims: TokenClaims): string {
    const key = this.keys[0] as Key;
    const v2 = claims.membership !== undefined;
    const plainBytes = v2 ? PLAIN_2 : PLAIN;
    const out = Buffer.allocUnsafe(HEADER + plainBytes + TAG);
    out[0] = v2 ? VERSION_2 : VERSION;
    key.id.copy(out, 1);
    randomBytes(12).copy(out, 5);
    const plain = Buffer.allocUnsafe(plainBytes);
    plain.set(claims.sessionKey.subarray(0, 16), 0);
    plain.writeBigUInt64BE(claims.backendKey, 16);
    plain.writeUInt32BE(claims.issuedAt >>> 0, 24);
    plain.writeUInt32BE(claims.lastSeen >>> 0, 28);
    if (v2) plain.writeUInt32BE((claims.membership as number) >>> 0, PLAIN);
    const cipher = createCipheriv("aes-256-gcm", key.secret, out.subarray(5, HEADER));
    cipher.setAAD(v2 ? key.aad2 : key.aad);
    cipher.update(plain).copy(out, HEADER);
    cipher.final();
    cipher.getAuthTag().copy(out, HEADER + plainBytes);
    return out.toString("base64url");
  }

  open(token: string): OpenResult {
    // Exact length and alphabet first: cheap, and it keeps garbage out of the cipher.
    const v2 = token.length === TOKEN_CHARS_2;
    if ((!v2 && token.length !== TOKEN_CHARS) || !isUrlSafe(token)) return { ok: false, reason: "malformed" };
    const buf = Buffer.from(token, "base64url");
    const plainBytes = v2 ? PLAIN_2 : PLAIN;
    if (buf.length !== HEADER + plainBytes + TAG || buf[0] !== (v2 ? VERSION_2 : VERSION))
      return { ok: false, reason: "malformed" };
    const id = buf.readUInt32BE(1);
    let index = 0;
    while (index < this.keys.length && (this.keys[index] as Key).idNumber !== id) index++;
    if (index === this.keys.length) return { ok: false, reason: "unknown-key" };
    const key = this.keys[index] as Key;
    let plain: Buffer;
    try {
      const decipher = createDecipheriv("aes-256-gcm", key.secret, buf.subarray(5, HEADER));
      decipher.setAAD(v2 ? key.aad2 : key.aad);
      decipher.setAuthTag(buf.subarray(HEADER + plainBytes));
      plain = decipher.update(buf.subarray(HEADER, HEADER + plainBytes));
      decipher.final(); // throws when the tag does not match
    } catch {
      return { ok: false, reason: "bad-mac" };
    }
    const claims: TokenClaims = {
      sessionKey: plain.subarray(0, 16),
      backendKey: plain.readBigUInt64BE(16),
      issuedAt: plain.readUInt32BE(24),
      lastSeen: plain.readUInt32BE(28),
    };
    if (v2) claims.membership = plain.readUInt32BE(PLAIN);
    return { ok: true, stale: index !== 0, claims };
  }
}
