/**
 * Placement of new sessions: a deterministic weighted ring (rendezvous
 * hashing) and a bounded-load wrapper. Pure: no I/O, no clock, no randomness.
 * Design notes and measurements: src/ring/README.md.
 */
export { BoundedLoad, DEFAULT_HASH_BALANCE_FACTOR } from "./bounded-load.ts";
export { hashKey, type KeyHash } from "./hash.ts";
export { HashRing, type RingMember } from "./hash-ring.ts";
