/**
 * Weighted rendezvous (highest-random-weight) hashing: every backend scores
 * every key and the key goes to the highest-scoring eligible backend. Why HRW
 * rather than a ketama ring or Maglev: src/ring/README.md.
 *
 * Weighted score (Schindelhauer & Schomaker, "Weighted distributed hash
 * tables", SPAA 2005): score = -w / ln(u), where u is the (key, backend) hash
 * as a uniform number in (0, 1); a backend then wins a key with probability
 * w / (sum of weights). We rank by the equivalent ln(u) / w.
 *
 * Speed: members are grouped by weight. Within a group the order of scores is
 * the order of the raw 32-bit hashes, so a lookup is an integer scan plus at
 * most one logarithm per distinct weight (none when all weights are equal).
 */
import { type KeyHash, memberSeed, mix, unitOf } from "./hash.ts";

export interface RingMember {
  /** Stable backend id: placement depends on it, never on list position. */
  readonly id: string;
  /** Relative share of keys: a finite number >= 0; 0 takes no keys. */
  readonly weight: number;
}

const INT32_MIN = -0x80000000;
/** Scores are negative: these widen a bound interval outward by a relative 2^-40. */
const WIDEN_HIGH = 1 - 2 ** -40;
const WIDEN_LOW = 1 + 2 ** -40;

export class HashRing {
  /**
   * The members that take keys (weight > 0) in canonical order: weight
   * descending, then id in code-unit order. The order depends only on ids
   * and weights, never on how the config lists them; equal scores (possible
   * only across different weights) go to the earlier member.
   */
  readonly members: readonly RingMember[];
  private readonly ids: string[];
  private readonly seeds: Int32Array;
  /** Members [groupStart[g], groupStart[g + 1]) share the weight groupWeight[g]. */
  private readonly groupStart: Int32Array;
  private readonly groupWeight: Float64Array;
  private readonly groupInvWeight: Float64Array;

  /**
   * Members left out of the ring: an id whose 32-bit seed equals an earlier
   * member's (canonical order) would tie with it on every key and never win
   * one. About 3 in 10 million for 50 ids, but backends that come and go
   * (DNS, the admin API) must never turn it into a crash: the later one is
   * refused, with its reason, and takes no keys.
   */
  readonly refused: readonly { id: string; reason: string }[];

  /**
   * @throws RangeError on a duplicate id, or a weight that is negative, NaN
   *   or infinite.
   */
  constructor(members: readonly RingMember[]) {
    const seen = new Set<string>();
    for (const m of members) {
      if (seen.has(m.id)) throw new RangeError(`ring: duplicate backend id "${m.id}"`);
      seen.add(m.id);
      if (!Number.isFinite(m.weight) || m.weight < 0) {
        throw new RangeError(
          `ring: backend "${m.id}" has weight ${m.weight}; it must be a finite number >= 0`,
        );
      }
    }
    const sorted = members
      .filter((m) => m.weight > 0)
      .map((m) => ({ id: m.id, weight: m.weight }))
      .sort((a, b) => b.weight - a.weight || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const bySeed = new Map<number, string>();
    const refused: { id: string; reason: string }[] = [];
    const live = sorted.filter((m) => {
      const seed = memberSeed(m.id);
      const other = bySeed.get(seed);
      if (other === undefined) {
        bySeed.set(seed, m.id);
        return true;
      }
      refused.push({ id: m.id, reason: `its ring seed equals backend "${other}"'s; rename one` });
      return false;
    });
    this.refused = refused;
    this.members = live;
    this.ids = live.map((m) => m.id);
    this.seeds = Int32Array.from(live, (m) => memberSeed(m.id));

    const starts: number[] = [];
    const weights: number[] = [];
    live.forEach((m, i) => {
      if (i === 0 || m.weight !== live[i - 1]?.weight) {
        starts.push(i);
        weights.push(m.weight);
      }
    });
    starts.push(live.length);
    this.groupStart = Int32Array.from(starts);
    this.groupWeight = Float64Array.from(weights);
    this.groupInvWeight = Float64Array.from(weights, (w) => 1 / w);
  }

  /** Number of members that take keys. */
  get size(): number {
    return this.ids.length;
  }

  /**
   * The backend for a key: the highest-scoring member for which `eligible`
   * returns true, that is the first eligible id in `preference(keyHash)`.
   * When a key's first choice is down, draining or in maintenance, every
   * worker and instance picks the same next choice. `eligible` is asked
   * about the first choice only, unless that one is refused; then about the
   * members that would beat the best so far (about ln N of them), in no
   * particular order. Returns null when no member is eligible.
   */
  lookup(keyHash: KeyHash, eligible?: (id: string) => boolean): string | null {
    const ids = this.ids;
    // Usually the first choice is eligible: find it with no callbacks, ask
    // once, and rescan with the callback only when it is not.
    const first = this.first(keyHash);
    if (first < 0 || eligible === undefined || eligible(ids[first] as string)) {
      return first < 0 ? null : (ids[first] as string);
    }
    const i = this.pick(keyHash, eligible, undefined, first);
    return i < 0 ? null : (ids[i] as string);
  }

  /**
   * Like lookup, but `accept` takes an index into `members` and the index of
   * the winner is returned (-1 for none): for wrappers such as BoundedLoad
   * that keep per-member state in arrays.
   */
  lookupIndex(keyHash: KeyHash, accept?: (index: number) => boolean): number {
    const first = this.first(keyHash);
    if (first < 0 || accept === undefined || accept(first)) return first;
    return this.pick(keyHash, undefined, accept, first);
  }

  /** All member ids in the key's order of preference, best first. O(N log N). */
  preference(keyHash: KeyHash): string[] {
    const n = this.ids.length;
    const scores = new Float64Array(n);
    for (let i = 0; i < n; i++) scores[i] = this.score(keyHash, i);
    const order = Array.from({ length: n }, (_, i) => i);
    order.sort((a, b) => (scores[b] as number) - (scores[a] as number) || a - b);
    return order.map((i) => this.ids[i] as string);
  }

  /** Member `index`'s score for a key, ln(u) / weight (higher wins). For tests and tools. */
  score(keyHash: KeyHash, index: number): number {
    const { groupStart } = this;
    let g = 0;
    while ((groupStart[g + 1] as number) <= index) g++;
    return Math.log(unitOf(mix(keyHash, this.seeds[index] as number))) * (this.groupInvWeight[g] as number);
  }

  /**
   * The first choice, with no callbacks: what pick(keyHash, undefined,
   * undefined, -1) returns, in loops with no calls in them (they compile
   * much tighter). The test "lookup equals the reference" holds them together.
   */
  private first(keyHash: KeyHash): number {
    const { seeds, groupStart, groupWeight, groupInvWeight } = this;
    const groups = groupInvWeight.length;
    if (groups === 1) {
      let top = INT32_MIN;
      let best = -1;
      for (let i = 0; i < seeds.length; i++) {
        const h = mix(keyHash, seeds[i] as number);
        if (h >= top) {
          top = h;
          best = i;
        }
      }
      return best;
    }
    const leader = new Leader();
    let start = 0;
    for (let g = 0; g < groups; g++) {
      const end = groupStart[g + 1] as number;
      // Scan from the floor below which no member can beat the leader (see
      // pick()): later groups then rarely take the branch, and rarely mispredict it.
      let top = end - start > 1 ? leader.scanFrom(groupWeight[g] as number) : INT32_MIN;
      let topIndex = -1;
      for (let i = start; i < end; i++) {
        const h = mix(keyHash, seeds[i] as number);
        if (h >= top) {
          top = h;
          topIndex = i;
        }
      }
      start = end;
      if (topIndex >= 0) leader.offer(topIndex, unitOf(top), groupInvWeight[g] as number);
    }
    return leader.index;
  }

  /**
   * The arg-max of the score over accepted members (ties to the lower index).
   * The acceptance callbacks run only for a member whose hash beats the best
   * so far in its weight group and could still beat the best overall.
   *
   * Across groups, scores are compared through bounds before any logarithm:
   *   (u - 1/u) / 2  <=  ln(u)  <=  2 (u - 1) / (u + 1)      for 0 < u <= 1,
   * each widened by a relative 2^-40, far more than the rounding of the
   * bounds, of Math.log and of the product with 1/w (a few 2^-53). So the
   * interval always holds the very number Math.log(u) / w would give, and a
   * decision made on disjoint intervals is the decision the logarithms would
   * make. Only when the intervals overlap (scores within about (1-u)^2 / 4 of
   * each other, rare) are the logarithms taken.
   */
  private pick(
    keyHash: KeyHash,
    eligible: ((id: string) => boolean) | undefined,
    accept: ((index: number) => boolean) | undefined,
    /** A member already known to be refused. */
    skip: number,
  ): number {
    const { ids, seeds, groupStart, groupWeight, groupInvWeight } = this;
    const groups = groupInvWeight.length;
    const leader = new Leader();
    for (let g = 0; g < groups; g++) {
      const end = groupStart[g + 1] as number;
      // A member can beat the leader only if its score's upper bound can
      // (Leader.scanFrom): start the scan from that floor so that hopeless
      // members cost no callback. ">=" lets the first member of a group in
      // even when its hash is the smallest; two members of a group never hash
      // a key the same, so it takes no other tie.
      let top =
        eligible !== undefined || accept !== undefined
          ? leader.scanFrom(groupWeight[g] as number)
          : INT32_MIN;
      let topIndex = -1;
      for (let i = groupStart[g] as number; i < end; i++) {
        const h = mix(keyHash, seeds[i] as number);
        if (
          h >= top &&
          i !== skip &&
          (eligible === undefined || eligible(ids[i] as string)) &&
          (accept === undefined || accept(i))
        ) {
          top = h;
          topIndex = i;
        }
      }
      if (topIndex < 0) continue;
      if (groups === 1) return topIndex;
      leader.offer(topIndex, unitOf(top), groupInvWeight[g] as number);
    }
    return leader.index;
  }
}

/**
 * The best member so far across weight groups. Its score ln(u) / w is kept
 * as an interval [low, high] from the bounds described at pick(); the
 * logarithms are taken only when a challenger's interval overlaps it.
 */
class Leader {
  index = -1;
  low = Number.NEGATIVE_INFINITY;
  high = Number.NEGATIVE_INFINITY;
  /** NaN until computed. */
  private score = Number.NaN;
  private u = 0;
  private invWeight = 0;

  /**
   * The hash a member of a group with this weight must reach to possibly
   * beat the leader: (u - 1) / w > low, i.e. h > (1 + low * w) * 2^32 - 0.5,
   * less 2 to stay clear of rounding.
   */
  scanFrom(weight: number): number {
    if (this.index < 0) return INT32_MIN;
    const floor = Math.floor((1 + this.low * weight) * 4294967296) - 2;
    return floor > 0 ? (floor + INT32_MIN) | 0 : INT32_MIN;
  }

  /** A group's top member (its hash as u in (0, 1]) challenges the leader. */
  offer(index: number, u: number, invWeight: number): void {
    const d = u - 1;
    // Cannot beat the leader: first by the looser bound ln(u) <= u - 1 (no division), then by the tight one.
    if (d * invWeight * WIDEN_HIGH <= this.low) return;
    const high = ((2 * d) / (u + 1)) * invWeight * WIDEN_HIGH;
    if (high <= this.low) return;
    const low = ((d * (u + 1)) / (2 * u)) * invWeight * WIDEN_LOW;
    if (low > this.high) {
      // Beats the leader for certain.
      this.index = index;
      this.low = low;
      this.high = high;
      this.score = Number.NaN;
      this.u = u;
      this.invWeight = invWeight;
      return;
    }
    if (Number.isNaN(this.score)) this.score = Math.log(this.u) * this.invWeight;
    const score = Math.log(u) * invWeight;
    if (score > this.score) {
      this.index = index;
      this.score = score;
    }
    this.low = this.score;
    this.high = this.score;
  }
}
