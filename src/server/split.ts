/**
 * A route's sticky traffic split (canaries, blue-green releases): "split":
 * [{ "pool": "v1", "weight": 90 }, { "pool": "v2", "weight": 10 }] instead of
 * "pool". A new session is given a pool by weight, then a backend inside it by
 * that pool's own rules; a returning session stays in its pool whatever the
 * weights have become. In order:
 *
 * 1. The split's own sealed cookie names a pool of the split: that pool.
 *    Sealed like cookie insert's tokens (token.ts), but under the split's
 *    own associated data: a pool's cookie is sealed per pool, so it cannot say
 *    which of several pools a session belongs to before one is chosen.
 * 2. A pool of the split whose rules name a session living in it (its own
 *    sealed cookie, a learned or remembered id): that pool.
 * 3. A session key the rules hash (a header, a URL id, the client address):
 *    weighted rendezvous hashing of the key over the pools, the same on every
 *    instance. No cookie: such clients may not keep one, so a weight change
 *    moves a share of them (as few as rendezvous hashing can).
 * 4. Otherwise a new session: a pool drawn by weight, and the split's cookie
 *    to keep it there.
 *
 * Weight 0 takes no new session (3 and 4) and keeps the existing ones (1, 2).
 */
import { randomBytes } from "node:crypto";
import type { SplitChoice, TrafficSplitter } from "../contracts.ts";
import { getCookie } from "../persistence/cookies.ts";
import { backendKey, TokenSealer } from "../persistence/token.ts";
import type { RequestFacts } from "../persistence/types.ts";
import type { Pool } from "../pool/pool.ts";
import { hashKey } from "../ring/hash.ts";

export interface SplitEntry {
  pool: string;
  weight: number;
}

/** The split cookie's name when the route names none. */
export const SPLIT_COOKIE = "TETHER_SPLIT";
/** Associated data standing for "a split" where a token names its pool: no pool can be named so ('~'). */
const SPLIT_SEAL = "~split";

/**
 * Weighted rendezvous hashing (HRW): each pool scores -weight / ln(u), u a
 * uniform hash of (key, pool name) in (0, 1); the highest wins. Pool p wins
 * with probability weight_p / total, and changing one weight only moves keys
 * to or from that pool. Pools of weight 0 never win. -1: no pool has weight.
 */
export function weightedPick(keyHash: number, entries: readonly SplitEntry[]): number {
  let best = -1;
  let bestScore = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i] as SplitEntry;
    if (e.weight <= 0) continue;
    const u = ((hashKey(`${keyHash}\0${e.pool}`) >>> 0) + 0.5) / 2 ** 32;
    const score = -e.weight / Math.log(u);
    if (score > bestScore) {
      bestScore = score;
      best = i;
    }
  }
  return best;
}

/** A pool drawn by weight, for a new session (u uniform in [0, 1)). -1: no pool has weight. */
export function drawByWeight(u: number, entries: readonly SplitEntry[]): number {
  let total = 0;
  for (const e of entries) total += Math.max(0, e.weight);
  if (total === 0) return -1;
  let at = u * total;
  for (let i = 0; i < entries.length; i++) {
    const w = Math.max(0, (entries[i] as SplitEntry).weight);
    if (at < w) return i;
    at -= w;
  }
  return entries.findLastIndex((e) => e.weight > 0);
}

export class TrafficSplit implements TrafficSplitter {
  private readonly sealer: TokenSealer;
  private readonly byKey = new Map<bigint, string>();
  private readonly prefix: string;

  constructor(
    readonly entries: readonly SplitEntry[],
    readonly cookieName: string,
    keys: readonly Buffer[],
    /** The runtime's pools: each of the split's is there (the config validator checks). */
    private readonly pools: ReadonlyMap<string, Pool>,
  ) {
    this.sealer = new TokenSealer(keys, SPLIT_SEAL, cookieName);
    this.prefix = `${cookieName}=`;
    for (const e of entries) this.byKey.set(backendKey(e.pool), e.pool);
  }

  choose(req: RequestFacts): SplitChoice {
    const token = req.cookie === null ? null : getCookie(req.cookie, this.cookieName);
    if (token !== null) {
      const r = this.sealer.open(token);
      const pool = r.ok ? this.byKey.get(r.claims.backendKey) : undefined;
      // A cookie under an older key is re-issued under the newest, as cookie insert's are.
      if (pool !== undefined)
        return { pool, by: "cookie", cookie: r.ok && r.stale ? this.cookie(pool, req) : null };
    }
    let key: string | null = null;
    for (const e of this.entries) {
      const d = this.pools.get(e.pool)?.chain.sessionOf(req);
      if (d === undefined || d === null) continue;
      if (d.kind === "pinned") return { pool: e.pool, by: "session", cookie: null };
      key ??= d.key;
    }
    if (key !== null) {
      const i = weightedPick(hashKey(key), this.entries);
      if (i !== -1) return { pool: (this.entries[i] as SplitEntry).pool, by: "key", cookie: null };
    }
    const i = drawByWeight(Math.random(), this.entries);
    // Every weight 0 (the config validator refuses it; kept safe): the first pool.
    const pool = (this.entries[i === -1 ? 0 : i] as SplitEntry).pool;
    return { pool, by: "weight", cookie: this.cookie(pool, req) };
  }

  /** The Set-Cookie value naming `pool`, without Secure (added for clients on TLS). */
  private cookie(pool: string, req: RequestFacts): string {
    const token = this.sealer.seal({
      sessionKey: new Uint8Array(randomBytes(16)),
      backendKey: backendKey(pool),
      issuedAt: req.nowSec,
      lastSeen: req.nowSec,
    });
    return `${this.prefix}${token}; Path=/; HttpOnly; SameSite=Lax`;
  }
}
