/**
 * `tether route`: where a request with these cookies, address, path and
 * headers would go, and why, computed by the same chain that serves traffic.
 */
import type { Config, ResolvedPool } from "../config/load.ts";
import type { SplitChoice } from "../contracts.ts";
import { generateKey } from "../persistence/token.ts";
import type { Placement, RequestFacts } from "../persistence/types.ts";
import { targetPath } from "../proxy/request-target.ts";
import { buildRuntime } from "../server/runtime.ts";
import { TrafficSplit } from "../server/split.ts";
import type { RouteQuery } from "./args.ts";

export interface RouteAnswer {
  pool: string;
  /** With --listener, a route with a traffic split: its pools and weights, and how it chose. */
  split?: { pools: string[]; choice: string };
  backend: string | null;
  rule: string | null;
  reason: string;
  /** The pool's persistence settings, as the chain applies them. */
  settings?: string[];
}

/** A hashing rule's stick table, as `tether route` names it. */
function stickText(r: { stick?: boolean; share?: boolean; maxEntries?: number }): string {
  if (!r.stick) return "";
  return ` stick maxEntries=${r.maxEntries ?? 1_000_000}${r.share ? " share" : ""}`;
}

/** One line per persistence setting of a pool: its rules in order, with their modes. */
export function describePersistence(pool: ResolvedPool): string[] {
  return pool.persistence.map((r, i) => {
    const at = `persistence[${i}]`;
    switch (r.type) {
      case "cookie":
        return r.mode === "insert"
          ? `${at}: cookie ${r.name} (insert) Path=${r.path} SameSite=${r.sameSite}${r.partitioned ? " Partitioned" : ""} rebalance=${r.rebalance}`
          : `${at}: cookie ${r.name} (${r.mode})`;
      case "header":
        return `${at}: header ${r.name} (${r.mode})${r.mode === "hash" ? stickText(r) : ""}`;
      case "url":
        return `${at}: url ${[r.param && `?${r.param}=`, r.pathParam && `;${r.pathParam}=`].filter(Boolean).join(" ")}${stickText({ ...r, maxEntries: r.stickMaxEntries ?? r.maxEntries })}`;
      case "client-ip":
        return `${at}: client-ip /${r.ipv4Prefix} /${r.ipv6Prefix}${stickText(r)}`;
      default:
        return `${at}: tls-session`;
    }
  });
}

function explain(p: Placement, rejected: string[]): string {
  const prefix = rejected.length ? `${rejected.join("; ")}; ` : "";
  switch (p.outcome) {
    case "hit":
      return `${prefix}${p.rule} names ${p.backendId}, which is eligible`;
    case "hash":
      return `${prefix}${p.rule} key hashed on the ring to ${p.backendId}`;
    case "repinned": {
      if (p.rebalanced) {
        const pinned = p.decisions.find((d) => d.kind === "pinned");
        const from = pinned?.kind === "pinned" ? pinned.backendId : "its backend";
        return `${prefix}${p.rule} names ${from}; ${p.backendId} joined the pool since the session was placed and owns its key on the ring (rebalance balanced), so it moves there`;
      }
      const pinned = p.decisions.find((d) => d.kind === "pinned");
      const from = pinned?.kind === "pinned" ? pinned.backendId : "its backend";
      return `${prefix}${p.rule} names ${from}, which is not eligible; moved to the ring's next choice ${p.backendId}`;
    }
    case "held":
      return `${prefix}${p.rule} names ${p.backendId}, which is not eligible; failover is strict, so the request gets 503 with Retry-After`;
    case "new":
      return `${prefix}no rule placed the request: a new session, placed by the ring on ${p.backendId}`;
  }
}

const SPLIT_BY: Record<SplitChoice["by"], string> = {
  cookie: "the split's cookie names it",
  session: "its rules name a session living in it",
  key: "a weighted hash of the session key chose it",
  weight: "a new session, drawn by weight (a cookie keeps it there)",
};

export function route(config: Config, q: RouteQuery): RouteAnswer {
  const runtime = buildRuntime(config, undefined, [Buffer.from(generateKey(), "base64")]);
  const facts = requestFactsOf(q);
  let poolName = q.pool;
  let split: RouteAnswer["split"];
  if (q.listener !== undefined) {
    const listener = runtime.listeners.get(q.listener);
    if (!listener)
      return { pool: "", backend: null, rule: null, reason: `no listener named "${q.listener}"` };
    const picked =
      runtime.routers.get(q.listener)?.pick(q.host ?? null, targetPath(facts.target)) ?? listener.pool;
    if (typeof picked === "string") poolName = picked;
    else {
      const choice = picked.choose(facts);
      poolName = choice.pool;
      const entries = picked instanceof TrafficSplit ? picked.entries : [];
      split = {
        pools: entries.map((e) => `${e.pool}=${e.weight}`),
        choice: `${choice.pool}: ${SPLIT_BY[choice.by]}`,
      };
    }
  }
  const pool = runtime.pools.get(poolName);
  const poolConfig = Object.hasOwn(config.pools, poolName) ? config.pools[poolName] : undefined;
  if (!pool || !poolConfig)
    return { pool: poolName, backend: null, rule: null, reason: `no pool named "${poolName}"` };
  const settings = [...describePersistence(poolConfig), `failover: ${poolConfig.failover}`];
  if (poolConfig.drainDeadlineMs) settings.push(`drainDeadlineMs: ${poolConfig.drainDeadlineMs}`);
  const placed = pool.chain.place(facts);
  const rejected = (placed?.rejections ?? []).map((r) => `${r.rule} rejected the cookie (${r.reason})`);
  const base = { pool: poolName, ...(split ? { split } : {}) };
  if (!placed)
    return { ...base, backend: null, rule: null, reason: "no eligible backend in the pool", settings };
  const { placement } = placed;
  return {
    ...base,
    backend: placement.backendId,
    rule: placement.rule,
    reason: explain(placement, rejected),
    settings,
  };
}

function requestFactsOf(q: RouteQuery): RequestFacts {
  const headers = new Headers();
  for (const h of q.headers) {
    const colon = h.indexOf(":");
    if (colon > 0) headers.append(h.slice(0, colon).trim(), h.slice(colon + 1).trim());
  }
  const facts: RequestFacts = {
    cookie: q.cookies.length ? q.cookies.join("; ") : null,
    target: q.path ?? "/",
    clientIp: q.ip ?? "127.0.0.1",
    headers,
    nowSec: Math.floor(Date.now() / 1000),
  };
  return facts;
}
