/**
 * What an HTTP request (or WebSocket upgrade) tells before any backend is
 * chosen, read from the one pass over its fields (headers.ts
 * scanRequestFields): its pool, the facts the persistence rules read, and
 * the facts the forwarding headers are built from.
 */
import type { RequestInfo } from "../contracts.ts";
import type { RequestFacts } from "../persistence/types.ts";
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
  headers: Headers,
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

export function poolFor(host: string | null, target: string, info: RequestInfo): Pool {
  const router = info.runtime.routers.get(info.listener.name);
  const poolName = router ? router.pick(host, targetPath(target)) : info.listener.pool;
  const pool = info.runtime.pools.get(poolName);
  // The config validator guarantees every routed pool exists.
  if (!pool) throw new ProxyError("NO_BACKEND", `pool ${poolName} missing`);
  return pool;
}
