/**
 * Backends added through the admin API, shared between instances through
 * Redis: what the set read from Redis does to this instance's API backends.
 * Pure; cluster.ts reads and writes Redis, server/membership.ts applies.
 *
 * - The shared set wins over what this instance holds (a backend deleted on
 *   another instance while this one was down leaves here too) once Redis
 *   has been seeded, which a marker written with every change records.
 * - An unseeded Redis (new, or restarted without persistence) is not an
 *   empty set: this instance's backends are written to it instead, so a
 *   Redis that lost its data never empties a pool.
 * - A failed read changes nothing: the caller never gets here.
 */

export interface SharedBackend {
  pool: string;
  id: string;
  url: string;
  weight: number;
}

export interface SharedSync {
  /** Added here, or changed (address, weight), or brought back from removal. */
  upsert: SharedBackend[];
  /** Held here but gone from the shared set: they drain and leave. */
  remove: { pool: string; id: string }[];
  /** Written to Redis: it had not been seeded. */
  seed: SharedBackend[];
}

/** This instance's API backends, `removing` for those already on their way out. */
export type LocalBackend = SharedBackend & { removing?: boolean };

/** `shared` null: Redis holds no set yet (not seeded). */
export function syncShared(
  local: readonly LocalBackend[],
  shared: readonly SharedBackend[] | null,
): SharedSync {
  if (shared === null)
    return {
      upsert: [],
      remove: [],
      seed: local.filter((b) => !b.removing).map(({ pool, id, url, weight }) => ({ pool, id, url, weight })),
    };
  const key = (b: { pool: string; id: string }) => `${b.pool}\0${b.id}`;
  const here = new Map(local.map((b) => [key(b), b]));
  const there = new Set(shared.map(key));
  return {
    upsert: shared.filter((s) => {
      const l = here.get(key(s));
      return !l || l.removing || l.url !== s.url || l.weight !== s.weight;
    }),
    remove: local.filter((l) => !l.removing && !there.has(key(l))).map(({ pool, id }) => ({ pool, id })),
    seed: [],
  };
}
