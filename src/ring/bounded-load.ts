/**
 * Consistent hashing with bounded loads (Mirrokni, Thorup & Zadimoghaddam,
 * arXiv:1608.01350), as a wrapper around the ring the way Envoy does it
 * (hash_balance_factor; arXiv:1908.08762).
 *
 * When a NEW session is placed, each eligible backend may hold at most
 *   cap = ceil(factor * (total in-flight + 1) * weight / sum of eligible weights)
 * in-flight requests, where the total counts eligible backends only. The key
 * goes to the first backend in its own HRW preference order that is under its
 * cap. That order is a per-key permutation, so the overflow of a hot backend
 * spreads over all the others instead of piling onto one neighbour (the
 * cascade that "next slot on the ring" would cause).
 *
 * Use it only to place new sessions: a pinned session never moves because of
 * load, and rules that must be a pure function of the key (pure hash rules)
 * call HashRing.lookup directly.
 */
import type { KeyHash } from "./hash.ts";
import type { HashRing } from "./hash-ring.ts";

/**
 * hashBalanceFactor when the config gives none. HAProxy's hash-balance-factor
 * is the same knob in percent (125 here) and Envoy's hash_balance_factor too
 * (both are off unless set).
 */
export const DEFAULT_HASH_BALANCE_FACTOR = 1.25;

export class BoundedLoad {
  private readonly ids: readonly string[];
  private readonly weights: Float64Array;
  private readonly totalWeight: number;
  /** Per-pick scratch, indexed like ring.members. */
  private readonly eligibleFlags: Uint8Array;
  private readonly loads: Float64Array;
  /** factor × (total in-flight + 1) / sum of eligible weights, for the pick under way. */
  private scale = 0;
  // The small slack keeps float error (1.1 * 10 = 11.000000000000002) from adding one to a cap.
  private readonly underCap = (i: number): boolean =>
    this.eligibleFlags[i] === 1 &&
    (this.loads[i] as number) < Math.ceil(this.scale * (this.weights[i] as number) - 1e-9);
  private readonly isEligible = (i: number): boolean => this.eligibleFlags[i] === 1;

  /**
   * Arguments in the order of the design's API sketch (docs/design.md).
   * @param ring the ring whose preference order placements follow.
   * @param factor hashBalanceFactor c: 0 turns bounding off (plain ring);
   *   otherwise at least 1 (DEFAULT_HASH_BALANCE_FACTOR is 1.25). Lower
   *   spreads load more evenly and moves more new sessions off their first
   *   choice.
   * @param load in-flight requests of a backend now, by id (a number >= 0).
   * @throws RangeError when factor is neither 0 nor a finite number >= 1.
   */
  constructor(
    readonly ring: HashRing,
    readonly factor: number,
    private readonly load: (id: string) => number,
  ) {
    if (!(factor === 0 || (Number.isFinite(factor) && factor >= 1))) {
      throw new RangeError(`hashBalanceFactor must be 0 (off) or a number >= 1, got ${factor}`);
    }
    this.ids = ring.members.map((m) => m.id);
    this.weights = Float64Array.from(ring.members, (m) => m.weight);
    this.totalWeight = ring.members.reduce((sum, m) => sum + m.weight, 0);
    this.eligibleFlags = new Uint8Array(ring.size);
    this.loads = new Float64Array(ring.size);
  }

  /**
   * The backend for a new session with this key: the first eligible backend
   * in the key's preference order whose in-flight load is under its cap.
   * With factor 0, or when every load is 0, that is ring.lookup(keyHash,
   * eligible). Returns null when no backend is eligible. When the first
   * choice is idle (or far under any cap it could have) it costs one call of
   * `eligible` and of `load`; otherwise one of each per backend, since the
   * average needs every load.
   */
  pick(keyHash: KeyHash, eligible?: (id: string) => boolean): string | null {
    const { ring, factor, ids, weights, eligibleFlags, loads } = this;
    if (factor === 0) return ring.lookup(keyHash, eligible);
    // Shortcut: the first choice is under its cap whenever it is under the
    // smallest cap it could have (its own load as the total, every backend
    // eligible); always so when it is idle. Saves asking about every backend.
    const first = ring.lookupIndex(keyHash);
    if (first >= 0) {
      const id = ids[first] as string;
      if (eligible === undefined || eligible(id)) {
        const l = this.load(id);
        const minScale = (factor * (l + 1)) / this.totalWeight;
        if (l < Math.ceil(minScale * (weights[first] as number) - 1e-9)) return id;
      }
    }
    let total = 0;
    let weightSum = 0;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i] as string;
      if (eligible !== undefined && !eligible(id)) {
        eligibleFlags[i] = 0;
        continue;
      }
      eligibleFlags[i] = 1;
      const l = this.load(id);
      loads[i] = l;
      total += l;
      weightSum += weights[i] as number;
    }
    if (weightSum === 0) return null;
    this.scale = (factor * (total + 1)) / weightSum;
    let i = ring.lookupIndex(keyHash, this.underCap);
    // With factor >= 1 the caps add up to more than the total load, so some
    // backend is under its cap; only odd loads (negative, NaN) get here.
    if (i < 0) i = ring.lookupIndex(keyHash, this.isEligible);
    return i < 0 ? null : (ids[i] as string);
  }
}
