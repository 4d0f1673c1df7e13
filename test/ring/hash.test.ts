import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { memberSeed, mix, unitOf } from "../../src/ring/hash.ts";
import { hashKey } from "../../src/ring/index.ts";

describe("hashKey", () => {
  test.each([
    ["the empty string", "", 46947589],
    ["one letter", "a", 1426945110],
    ["a session key (128-bit hex)", "3f2a9c0d8e7b6a5f4e3d2c1b0a998877", 3003685780],
    ["an IPv4 address", "203.0.113.7", 3864506132],
    ["an IPv6 address", "2001:db8::1", 1226894868],
    ["non-ASCII text", "Grüße, 世界", 1610007095],
  ])("%s hashes to its pinned value (a change here re-places every session)", (_what, key, expected) => {
    expect(hashKey(key)).toBe(expected);
  });

  test("is xxHash32 (seed 0) of the UTF-8 bytes, as an unsigned 32-bit integer", () => {
    fc.assert(
      fc.property(fc.string({ unit: "grapheme", maxLength: 64 }), (key) => {
        const h = hashKey(key);
        expect(Number.isInteger(h) && h >= 0 && h < 2 ** 32).toBe(true);
        expect(h).toBe(Bun.hash.xxHash32(new TextEncoder().encode(key)) >>> 0);
      }),
      { numRuns: 200 },
    );
  });

  test("depends on the text only, not on how the engine stores the string", () => {
    const latin1 = "café";
    const utf16 = "café€".slice(0, 4); // sliced from a two-byte string
    expect(utf16).toBe(latin1);
    expect(hashKey(utf16)).toBe(hashKey(latin1));
  });
});

describe("per-backend hash", () => {
  test("member seeds and the mix are pinned (a change here re-places every session)", () => {
    expect([memberSeed("app-1"), memberSeed("app-2")]).toEqual([-762869985, -233695039]);
    expect([mix(0, 0), mix(1, 0), mix(0xdeadbeef, 0x12345678)]).toEqual([-2147483648, -393637696, 857421953]);
  });

  test("mix is a bijection of the key for a fixed seed, so two seeds never tie on a key", () => {
    fc.assert(
      fc.property(fc.integer(), fc.integer(), fc.nat(2 ** 32 - 1), (s1, s2, k) => {
        fc.pre((s1 | 0) !== (s2 | 0));
        expect(mix(k, s1 | 0)).not.toBe(mix(k, s2 | 0));
      }),
      { numRuns: 2000 },
    );
  });

  test("unitOf maps the whole hash range strictly inside (0, 1)", () => {
    expect(unitOf(-(2 ** 31))).toBe(2 ** -33);
    expect(unitOf(2 ** 31 - 1)).toBe(1 - 2 ** -33);
  });
});
