/**
 * "rebalance": "balanced" on a cookie-insert rule: when backends join a pool,
 * the sessions whose key the ring now gives to a joined backend move there,
 * and no others (ingress-nginx's balanced mode). The ring is rendezvous
 * hashing, so a join only ever takes keys for the joiner: adding a fifth
 * backend to four moves about a fifth of the sessions, all to it.
 *
 * A cookie carries the membership version its session was placed under. New
 * sessions are placed with bounded loads, so many sit off their key's ring
 * owner on purpose: they must stay unless the membership changed since, and
 * then move only to a backend that was not a member when they were placed.
 *
 * The version is a hash of the set of backend ids, so it means the same on
 * every worker and instance with the same config. "Was not a member then" is
 * answered from the memberships this process has served (kept across
 * reloads), or, for a version it never served (an instance started after
 * the change), when the version equals that of today's set without the
 * owner: the one-backend join, the common case. A change neither answers
 * (several joined while this instance was down) moves nothing: the session
 * stays, as it would with "persistent".
 */
import { hashKey } from "../ring/hash.ts";

/** The membership version of a set of backend ids: independent of order. */
export function membershipVersion(ids: Iterable<string>): number {
  return hashKey([...new Set(ids)].sort().join("\0"));
}

/** Memberships kept: each reload or membership change adds one. */
const HISTORY_MAX = 64;

export class Rebalancer {
  readonly version: number;
  /** Memberships served, by version, oldest first (this one last). */
  readonly history: ReadonlyMap<number, ReadonlySet<string>>;
  private readonly ids: readonly string[];

  constructor(
    ids: readonly string[],
    /** The ring's owner of a key (its first choice, eligible or not). */
    private readonly owner: (keyHash: number) => string | null,
    previous?: ReadonlyMap<number, ReadonlySet<string>>,
  ) {
    this.ids = ids;
    this.version = membershipVersion(ids);
    const history = new Map(previous);
    history.delete(this.version);
    history.set(this.version, new Set(ids));
    while (history.size > HISTORY_MAX) history.delete(history.keys().next().value as number);
    this.history = history;
  }

  /** Whether `id` joined after the membership `placedUnder`; false when that cannot be told. */
  joinedSince(id: string, placedUnder: number): boolean {
    const then = this.history.get(placedUnder);
    if (then !== undefined) return !then.has(id);
    return membershipVersion(this.ids.filter((m) => m !== id)) === placedUnder;
  }

  /**
   * Where a session on `backendId`, placed under membership `placedUnder`,
   * moves: its key's ring owner if that backend joined since, else null (it
   * stays). Eligibility is the caller's: it changes from request to request.
   */
  moveTo(keyHash: number, backendId: string, placedUnder: number): string | null {
    if (placedUnder === this.version) return null;
    const owner = this.owner(keyHash);
    if (owner === null || owner === backendId) return null;
    return this.joinedSince(owner, placedUnder) ? owner : null;
  }
}
