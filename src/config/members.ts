/**
 * Dynamic membership: a pool's backends are the config file's plus an
 * overlay of members added while running (by DNS discovery or the admin
 * API). The overlay is merged into the Config, so a membership change is
 * applied exactly as a reload is: every thread builds its Runtime from the
 * merged Config, backend objects are kept by id and address, learned tables
 * are kept, and no session pinned to a surviving backend moves.
 */
import type { Config, ResolvedBackend, ResolvedPool } from "./load.ts";
import { resolveBackend } from "./load.ts";
import { type BackendSource, backendSchema, isTcpPool } from "./schema.ts";

export interface Member {
  pool: string;
  id: string;
  url: string;
  weight: number;
  source: Exclude<BackendSource, "config">;
  /**
   * https: the name sent (SNI) and checked in its certificate, when it is not
   * the URL's host (a discovered backend's URL holds its address; this is the
   * name that resolved to it).
   */
  serverName?: string;
  /** Being removed: it drains (keeps its sessions, takes no new ones) until it leaves. */
  removing?: boolean;
  /** Being removed: its drain deadline (ms since the epoch), when its WebSockets close and it leaves. */
  removeUntil?: number;
}

export interface Skipped {
  member: Member;
  reason: string;
}

export const memberKey = (pool: string, id: string) => `${pool}\0${id}`;

/**
 * Why a member cannot join a pool of this config, or null. Checked when it is
 * added and again at every merge, since a reload may have changed the pool.
 */
export function memberProblem(
  config: Config,
  m: Pick<Member, "pool" | "id" | "url" | "weight">,
): string | null {
  const pool = Object.hasOwn(config.pools, m.pool) ? config.pools[m.pool] : undefined;
  if (!pool) return `no pool named "${m.pool}"`;
  const parsed = backendSchema.safeParse({ id: m.id, url: m.url, weight: m.weight });
  if (!parsed.success) return parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ");
  if (pool.backends.some((b) => b.id === m.id && !b.source)) return `backend "${m.id}" is in the config file`;
  const tcp = m.url.startsWith("tcp:");
  const listed = pool.backends.filter((b) => !b.source);
  if (tcp !== isTcpPool({ backends: listed, discover: pool.discover }))
    return tcp
      ? `pool "${m.pool}" holds http(s):// backends`
      : `pool "${m.pool}" holds tcp:// backends (a tls-passthrough pool)`;
  return null;
}

/** A discovered https backend's TLS settings: its pool's discover.tls, and the name that resolved to it. */
function memberTls(pool: ResolvedPool, m: Member): { tls?: { serverName?: string; verify: boolean } } {
  if (m.source !== "dns" || !m.url.startsWith("https:")) return {};
  return {
    tls: {
      verify: pool.discover?.tls?.verify ?? true,
      ...(m.serverName ? { serverName: m.serverName } : {}),
    },
  };
}

/**
 * The base config with the members added to their pools. Members that no
 * longer fit (their pool is gone, or the config now lists their id) are left
 * out and reported, never fatal.
 */
export function composeConfig(
  base: Config,
  members: Iterable<Member>,
): { config: Config; skipped: Skipped[] } {
  const skipped: Skipped[] = [];
  const extra = new Map<string, ResolvedBackend[]>();
  for (const m of members) {
    const problem = memberProblem(base, m);
    if (problem) {
      skipped.push({ member: m, reason: problem });
      continue;
    }
    const b = resolveBackend(
      backendSchema.parse({
        id: m.id,
        url: m.url,
        weight: m.weight,
        state: m.removing ? "drain" : "ready",
        ...memberTls(base.pools[m.pool] as ResolvedPool, m),
      }),
    );
    const ca = base.pools[m.pool]?.discoverCaPem;
    if (m.source === "dns" && b.secure && ca) b.caPem = ca;
    b.source = m.source;
    if (m.removing) {
      b.removing = true;
      if (m.removeUntil) b.removeUntil = m.removeUntil;
    }
    const list = extra.get(m.pool) ?? [];
    list.push(b);
    extra.set(m.pool, list);
  }
  if (extra.size === 0) return { config: base, skipped };
  const pools: Config["pools"] = {};
  for (const [name, pool] of Object.entries(base.pools)) {
    const more = extra.get(name);
    // Sorted by id: every thread and instance builds the same pool from the same set.
    pools[name] = more
      ? {
          ...pool,
          backends: [...pool.backends, ...more.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))],
        }
      : pool;
  }
  return { config: { ...base, pools }, skipped };
}
