import { describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import fc from "fast-check";
import { backendKey, parseKey, TokenSealer } from "../../src/persistence/token.ts";

const k1 = randomBytes(32);
const k2 = randomBytes(32);
const claims = () => ({
  sessionKey: randomBytes(16),
  backendKey: backendKey("app-1"),
  issuedAt: 1_700_000_000,
  lastSeen: 1_700_000_100,
});

describe("sealed tokens", () => {
  test("a sealed token opens to the same claims", () => {
    const s = new TokenSealer([k1], "app", "TETHER");
    const c = claims();
    const r = s.open(s.seal(c));
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(Buffer.from(r.claims.sessionKey).equals(Buffer.from(c.sessionKey))).toBe(true);
    expect(r.claims.backendKey).toBe(c.backendKey);
    expect(r.claims.issuedAt).toBe(c.issuedAt);
    expect(r.claims.lastSeen).toBe(c.lastSeen);
    expect(r.stale).toBe(false);
  });

  test("the token reveals nothing about the backend: two seals of the same claims differ", () => {
    const s = new TokenSealer([k1], "app", "TETHER");
    const c = claims();
    const a = s.seal(c);
    expect(a).not.toBe(s.seal(c));
    expect(a).not.toContain("app-1");
  });

  test("a token cannot be moved to another pool or cookie name", () => {
    const token = new TokenSealer([k1], "app", "TETHER").seal(claims());
    expect(new TokenSealer([k1], "other", "TETHER").open(token)).toEqual({ ok: false, reason: "bad-mac" });
    expect(new TokenSealer([k1], "app", "OTHER").open(token)).toEqual({ ok: false, reason: "bad-mac" });
  });

  test("keys rotate: the old key still opens (stale), an unknown key is reported", () => {
    const old = new TokenSealer([k1], "app", "TETHER").seal(claims());
    const rotated = new TokenSealer([k2, k1], "app", "TETHER");
    const r = rotated.open(old);
    expect(r.ok && r.stale).toBe(true);
    expect(new TokenSealer([k2], "app", "TETHER").open(old)).toEqual({ ok: false, reason: "unknown-key" });
  });

  test("every single-character edit is rejected (property)", () => {
    const s = new TokenSealer([k1], "app", "TETHER");
    const token = s.seal(claims());
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    fc.assert(
      fc.property(fc.nat({ max: token.length - 1 }), fc.constantFrom(...alphabet), (i, ch) => {
        fc.pre(token[i] !== ch);
        const tampered = token.slice(0, i) + ch + token.slice(i + 1);
        const r = s.open(tampered);
        // The last character carries 2 spare bits in base64url; changing only those decodes to the same bytes.
        if (r.ok) return Buffer.from(tampered, "base64url").equals(Buffer.from(token, "base64url"));
        return true;
      }),
      { numRuns: 2000 },
    );
  });

  test("a token with a membership version (v2) opens to it; one without (v1) opens without it", () => {
    const s = new TokenSealer([k1], "app", "TETHER");
    const v2 = s.seal({ ...claims(), membership: 0xdeadbeef });
    const v1 = s.seal(claims());
    expect([v1.length, v2.length]).toEqual([87, 92]);
    const r2 = s.open(v2);
    const r1 = s.open(v1);
    expect(r2.ok && r2.claims.membership).toBe(0xdeadbeef);
    expect(r1.ok && r1.claims.membership).toBeUndefined();
    expect(r1.ok && r1.claims.backendKey).toBe(backendKey("app-1"));
  });

  test("a v2 token cannot pass for a v1 token: the version byte is authenticated", () => {
    const s = new TokenSealer([k1], "app", "TETHER");
    const buf = Buffer.from(s.seal({ ...claims(), membership: 7 }), "base64url");
    buf[0] = 1;
    expect(s.open(buf.toString("base64url")).ok).toBe(false);
    // Cut to v1's length: the tag no longer matches.
    const cut = Buffer.concat([buf.subarray(0, 17 + 32), buf.subarray(17 + 36)]);
    expect(s.open(cut.toString("base64url"))).toEqual({ ok: false, reason: "bad-mac" });
  });

  test("arbitrary strings never open and never throw (property)", () => {
    const s = new TokenSealer([k1], "app", "TETHER");
    fc.assert(
      fc.property(fc.string({ maxLength: 200 }), (t) => s.open(t).ok === false),
      { numRuns: 2000 },
    );
  });

  test("parseKey accepts 32 base64 bytes only", () => {
    expect(parseKey(k1.toString("base64")).equals(k1)).toBe(true);
    expect(() => parseKey("c2hvcnQ=")).toThrow(/32 bytes/);
  });
});
