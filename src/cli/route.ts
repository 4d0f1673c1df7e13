/**
 * `tether route`: where a request with these cookies, address, path and
 * headers would go, and why, computed by the same chain that serves traffic.
 */
import type { Config } from "../config/load.ts";
import { generateKey } from "../persistence/token.ts";
import type { Placement, RequestFacts } from "../persistence/types.ts";
import { buildRuntime } from "../server/runtime.ts";
import type { RouteQuery } from "./args.ts";

export interface RouteAnswer {
  pool: string;
  backend: string | null;
  rule: string | null;
  reason: string;
}

function explain(p: Placement, rejected: string[]): string {
  const prefix = rejected.length ? `${rejected.join("; ")}; ` : "";
  switch (p.outcome) {
    case "hit":
      return `${prefix}${p.rule} names ${p.backendId}, which is eligible`;
    case "hash":
      return `${prefix}${p.rule} key hashed on the ring to ${p.backendId}`;
    case "repinned": {
      const pinned = p.decisions.find((d) => d.kind === "pinned");
      const from = pinned?.kind === "pinned" ? pinned.backendId : "its backend";
      return `${prefix}${p.rule} names ${from}, which is not eligible; moved to the ring's next choice ${p.backendId}`;
    }
    case "new":
      return `${prefix}no rule placed the request: a new session, placed by the ring on ${p.backendId}`;
  }
}

export function route(config: Config, q: RouteQuery): RouteAnswer {
  const runtime = buildRuntime(config, undefined, [Buffer.from(generateKey(), "base64")]);
  const pool = runtime.pools.get(q.pool);
  if (!pool) return { pool: q.pool, backend: null, rule: null, reason: `no pool named "${q.pool}"` };
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
  const placed = pool.chain.place(facts);
  const rejected = (placed?.rejections ?? []).map((r) => `${r.rule} rejected the cookie (${r.reason})`);
  if (!placed) return { pool: q.pool, backend: null, rule: null, reason: "no eligible backend in the pool" };
  const { placement } = placed;
  return {
    pool: q.pool,
    backend: placement.backendId,
    rule: placement.rule,
    reason: explain(placement, rejected),
  };
}
