/**
 * Hashes for placement. Both are fixed functions of their input bytes, with no
 * per-process seed, so every worker and every instance computes the same value
 * (pinned by golden tests in test/ring).
 */

/**
 * The hash of a persistence key (session key, client IP, header value): an
 * unsigned 32-bit integer, xxHash32 (seed 0) of the key's UTF-8 bytes. A
 * string is hashed as UTF-8 whatever its in-memory form, and a lone surrogate
 * as U+FFFD, so the value depends only on the text.
 *
 * 32 bits are plenty to place keys: two keys that collide simply share a
 * backend. Bun's 64-bit hashes come as bigints: as fast to compute, but
 * turning one into numbers costs ~35 ns more per key, and a bigint key would
 * make every lookup slower. Measurements: src/ring/README.md.
 */
export type KeyHash = number;

export function hashKey(key: string): KeyHash {
  return Bun.hash.xxHash32(key) >>> 0;
}

/** A backend's seed, from its id alone (never its position in a list). */
export function memberSeed(id: string): number {
  return Bun.hash.xxHash32(id, SEED_SALT) | 0;
}
const SEED_SALT = 0x7e7e7;

/**
 * The per-(key, backend) hash: lowbias32 (C. Wellons' hash-prospector, a
 * 32-bit integer hash with lower measured bias than MurmurHash3's fmix32) of
 * key XOR seed. For a given seed it is a
 * bijection of the key, so backends with different seeds never hash a key
 * the same: no ties among equal weights.
 *
 * Returned as h - 2^31 in a signed 32-bit integer, h being the unsigned hash:
 * the same order as h, and it stays an int32 in the JIT (an unsigned value
 * above 2^31 would become a double).
 */
export function mix(keyHash: number, seed: number): number {
  let x = keyHash ^ seed;
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x ^ -0x80000000;
}

/** u in (0, 1) for a mix() result: (h + 0.5) / 2^32. */
export function unitOf(mixed: number): number {
  return (mixed + 2147483648.5) * 2 ** -32;
}
