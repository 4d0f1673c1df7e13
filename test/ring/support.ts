/**
 * Helpers for the ring tests: reproducible keys, counting, and the mapping
 * fingerprint that test/ring/fingerprint.ts prints from a child process.
 */
import fc from "fast-check";
import { HashRing, hashKey, type RingMember } from "../../src/ring/index.ts";

/** mulberry32: a tiny seeded PRNG, so a failing fast-check seed reproduces its keys. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return (t ^ (t >>> 14)) >>> 0;
  };
}

const HEX = new TextEncoder().encode("0123456789abcdef");

/**
 * hashKey() of `count` session keys shaped like tether's (128-bit random hex,
 * 32 characters). The key's ASCII bytes are hashed straight from a buffer:
 * the same value as hashKey(text) (hash.test.ts checks that hashKey is
 * xxHash32 of the UTF-8 bytes), without making 100k strings.
 */
export function sessionKeyHashes(seed: number, count: number): Uint32Array {
  const next = prng(seed);
  const bytes = new Uint8Array(32);
  const out = new Uint32Array(count);
  for (let i = 0; i < count; i++) {
    for (let w = 0; w < 4; w++) {
      let r = next();
      for (let d = 7; d >= 0; d--) {
        bytes[w * 8 + d] = HEX[r & 15] as number;
        r >>>= 4;
      }
    }
    out[i] = Bun.hash.xxHash32(bytes) >>> 0;
  }
  return out;
}

/** The text of the i-th key that sessionKeyHashes(seed, ...) hashes, to check the shortcut. */
export function sessionKeyText(seed: number, i: number): string {
  const next = prng(seed);
  for (let j = 0; j < i * 4; j++) next();
  return [next(), next(), next(), next()].map((w) => w.toString(16).padStart(8, "0")).join("");
}

/** How many keys each id receives. */
export function tally(
  ring: HashRing,
  keys: Uint32Array,
  eligible?: (id: string) => boolean,
): Map<string, number> {
  const counts = new Map<string, number>();
  for (const k of keys) {
    const id = ring.lookup(k, eligible);
    if (id !== null) counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  return counts;
}

/** Backend-like ids: unique, non-empty, any characters. */
export const arbIds = (minLength: number, maxLength: number) =>
  fc.uniqueArray(fc.string({ minLength: 1, maxLength: 16 }), { minLength, maxLength });

/** The same members in another order. */
export function shuffled<T>(items: readonly T[], seed: number): T[] {
  const next = prng(seed);
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = next() % (i + 1);
    [out[i], out[j]] = [out[j] as T, out[i] as T];
  }
  return out;
}

export const FINGERPRINT_MEMBERS: readonly RingMember[] = [
  { id: "app-1", weight: 1 },
  { id: "app-2", weight: 3 },
  { id: "app-3", weight: 1 },
  { id: "eu-west-7", weight: 2 },
  { id: "zero", weight: 0 },
];

/**
 * A digest of where 20,000 keys go, first choice and first choice with
 * "app-2" down, for FINGERPRINT_MEMBERS listed in the given order.
 */
export function mappingFingerprint(members: readonly RingMember[]): string {
  const ring = new HashRing(members);
  const parts: string[] = [];
  for (let i = 0; i < 20_000; i++) {
    const k = hashKey(`session-${i}`);
    parts.push(`${ring.lookup(k)}|${ring.lookup(k, (id) => id !== "app-2")}`);
  }
  return Bun.hash.xxHash64(parts.join("\n")).toString(16);
}
