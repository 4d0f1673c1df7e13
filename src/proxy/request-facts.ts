/**
 * What an HTTP request (or WebSocket upgrade) tells before any backend is
 * chosen, read from the one pass over its fields (headers.ts
 * scanRequestFields): its pool, the facts the persistence rules read, and
 * the facts the forwarding headers are built from.
 */
import type { Audit } from "../audit.ts";
import type { RequestInfo, SplitChoice } from "../contracts.ts";
import type { Effect, FieldLookup, RequestFacts } from "../persistence/types.ts";
import type { Pool } from "../pool/pool.ts";
import { ProxyError } from "./errors.ts";
import { clientAddress, type ForwardFacts, type ScannedHead } from "./headers.ts";
import { targetPath } from "./request-target.ts";

export function forwardFacts(info: RequestInfo): ForwardFacts {
  return {
    peerIp: info.peerIp,
    peerTrusted: info.runtime.trusted.has(info.peerIp),
    proto: info.listener.protocol,
  };
}

export function requestFacts(
  head: ScannedHead,
  headers: FieldLookup,
  target: string,
  info: RequestInfo,
): RequestFacts {
  return {
    cookie: head.cookie,
    target,
    clientIp: clientAddress(info.peerIp, head.xForwardedFor, info.runtime.trusted),
    headers,
    nowSec: Math.floor(Date.now() / 1000),
  };
}

/**
 * Whether the client reached tether over TLS: an https listener, or a TLS
 * terminator in trustedProxies in front of it that says so in
 * X-Forwarded-Proto (its first value is the client-facing hop's).
 */
export function clientUsesTls(head: ScannedHead, fwd: ForwardFacts): boolean {
  if (fwd.proto === "https") return true;
  const xfp = head.xForwardedProto;
  if (!fwd.peerTrusted || xfp === null) return false;
  const comma = xfp.indexOf(",");
  return (comma === -1 ? xfp : xfp.slice(0, comma)).trim().toLowerCase() === "https";
}

/** Where a route's traffic split puts its choice for the request (null: the route names one pool). */
export interface SplitSlot {
  split: SplitChoice | null;
}

/**
 * The request's pool: its route's, or, for a route with a traffic split, the
 * pool the split chooses from `facts` (noted in `slot` for the response).
 */
export function poolFor(
  host: string | null,
  target: string,
  info: RequestInfo,
  facts: RequestFacts,
  slot: SplitSlot,
): Pool {
  const router = info.runtime.routers.get(info.listener.name);
  const picked = router ? router.pick(host, targetPath(target)) : info.listener.pool;
  let poolName: string;
  if (typeof picked === "string") poolName = picked;
  else {
    slot.split = picked.choose(facts);
    poolName = slot.split.pool;
  }
  const pool = info.runtime.pools.get(poolName);
  // The config validator guarantees every routed pool exists.
  if (!pool) throw new ProxyError("NO_BACKEND", `pool ${poolName} missing`);
  return pool;
}

/** The response's effects with the split's cookie added, when one is due (Secure for clients on TLS). */
export function withSplitCookie(effects: Effect[], split: SplitChoice | null, secure: boolean): Effect[] {
  if (split === null || split.cookie === null) return effects;
  const header = secure ? `${split.cookie}; Secure` : split.cookie;
  return [...effects, { kind: "set-cookie", header }];
}

/**
 * A new session given a pool by a split's weights gets one audit line, once
 * its backend answered: an HTTP response or a WebSocket upgrade alike.
 */
export function auditSplit(
  audit: Audit,
  split: SplitChoice | null,
  listener: string,
  client: string,
  backend: string,
): void {
  if (split?.by === "weight") audit.emit("session.split", { listener, pool: split.pool, client, backend });
}
