/**
 * Forwards one HTTP request: the pool's persistence chain places it, the
 * upstream client sends it (a failed connect is retried on the session's
 * next choice and the session re-pinned there), and the backend's response
 * goes to the client with hop-by-hop headers removed and the persistence
 * rules' cookies applied. Bodies stream both ways.
 */

import type { Metrics } from "../admin/metrics.ts";
import type { Audit } from "../audit.ts";
import type { ResolvedListener } from "../config/load.ts";
import type { Logger } from "../log.ts";
import type { PlaceResult } from "../persistence/chain.ts";
import type { Effect, Placement, RequestFacts, ResponseFacts } from "../persistence/types.ts";
import type { HealthMonitor } from "../pool/health.ts";
import type { Backend, Pool } from "../pool/pool.ts";
import { hashKey } from "../ring/hash.ts";
import type { Runtime } from "../server/runtime.ts";
import { ProxyError, proxyErrorResponse } from "./errors.ts";
import { backendRequestHeaders, clientAddress, clientResponseHeaders, type ForwardFacts } from "./headers.ts";
import { requestTarget, targetPath } from "./request-target.ts";
import { guardStream } from "./stream-guard.ts";
import type { UpstreamClient } from "./upstream/client.ts";
import type { AbortLike, UpstreamRequest, UpstreamResponse } from "./upstream/types.ts";

/** Learned sessions held by other tether instances (Redis): consulted on a local miss. */
export interface ClusterLookup {
  lookup(
    pool: string,
    table: string,
    key: number,
  ): Promise<{ backendId: string; expiresAtSec: number } | null>;
}

export interface ProxyDeps {
  upstream: UpstreamClient;
  log: Logger;
  audit: Audit;
  metrics: Metrics;
  health: HealthMonitor;
  cluster?: ClusterLookup | null;
}

/**
 * The one decision step that waits on I/O: a session ID this instance has not
 * learned is looked up in the cluster first (bounded by the lookup's own
 * timeout; a miss or timeout places the request as new).
 */
export async function prefetchLearned(pool: Pool, facts: RequestFacts, deps: ProxyDeps): Promise<void> {
  const cluster = deps.cluster;
  if (!cluster || pool.chain.tables.size === 0) return;
  const missing = pool.chain.missingKeys(facts);
  if (missing.length === 0) return;
  await Promise.all(
    missing.map(async ({ table, key }) => {
      const hit = await cluster.lookup(pool.name, table, key);
      if (hit && pool.get(hit.backendId))
        pool.chain.tables.get(table)?.putHashed(key, hit.backendId, hit.expiresAtSec, facts.nowSec);
    }),
  );
}

/** What the listener knows about the request before any backend is chosen. */
export interface RequestInfo {
  listener: ResolvedListener;
  runtime: Runtime;
  peerIp: string;
  startedAt: number;
  /** Called once the response (its whole body, for a stream) has been handed to the client. */
  responded?: () => void;
  /** Aborts when the client goes away (default: the request's own signal). */
  signal?: AbortLike;
}

export function forwardFacts(req: Request, info: RequestInfo): ForwardFacts {
  return {
    peerIp: info.peerIp,
    peerTrusted: info.runtime.trusted.has(info.peerIp),
    proto: info.listener.protocol,
    host: req.headers.get("host") ?? "",
  };
}

export function requestFacts(req: Request, target: string, info: RequestInfo): RequestFacts {
  return {
    cookie: req.headers.get("cookie"),
    target,
    clientIp: clientAddress(info.peerIp, req.headers.get("x-forwarded-for"), info.runtime.trusted),
    headers: req.headers,
    nowSec: Math.floor(Date.now() / 1000),
  };
}

export function poolFor(req: Request, target: string, info: RequestInfo): Pool {
  const router = info.runtime.routers.get(info.listener.name);
  const poolName = router ? router.pick(req.headers.get("host"), targetPath(target)) : info.listener.pool;
  const pool = info.runtime.pools.get(poolName);
  // The config validator guarantees every routed pool exists.
  if (!pool) throw new ProxyError("NO_BACKEND", `pool ${poolName} missing`);
  return pool;
}

function bodyOf(req: Request): { body: UpstreamRequest["body"]; bodyLength: number | null } {
  if (req.body === null) return { body: null, bodyLength: null };
  const cl = req.headers.get("content-length");
  if (cl !== null && /^\d+$/.test(cl)) return { body: req.body, bodyLength: Number(cl) };
  return { body: req.body, bodyLength: null };
}

/**
 * Waits for a slot under the backend's maxConn; a pinned session waits rather
 * than breaking. The caller takes a free slot itself, without a promise.
 */
async function waitForSlot(backend: Backend, queueTimeoutMs: number, signal: AbortLike): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const wake = () => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      backend.waiters.splice(backend.waiters.indexOf(wake), 1);
      reject(new ProxyError("NO_BACKEND", "queue timeout"));
    }, queueTimeoutMs);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      const i = backend.waiters.indexOf(wake);
      if (i !== -1) backend.waiters.splice(i, 1);
      reject(new ProxyError("BAD_REQUEST", "client went away"));
    });
    backend.waiters.push(wake);
  });
  backend.inflight++;
}

function release(backend: Backend) {
  backend.inflight--;
  backend.waiters.shift()?.();
}

/**
 * Under maxConn a slot is held until the response body has been passed on (or
 * failed). Without a limit the slot is released with the response head, which
 * keeps the hot path free of a wrapping stream.
 */
function releaseWhenDone(res: UpstreamResponse, backend: Backend): UpstreamResponse {
  if (!(res.body instanceof ReadableStream) || backend.maxConn === Number.POSITIVE_INFINITY) {
    release(backend);
    return res;
  }
  let released = false;
  const done = () => {
    if (!released) {
      released = true;
      release(backend);
    }
  };
  const reader = res.body.getReader();
  const body = new ReadableStream<Uint8Array>({
    async pull(c) {
      try {
        const { done: end, value } = await reader.read();
        if (end) {
          done();
          c.close();
        } else c.enqueue(value);
      } catch (e) {
        done();
        c.error(e);
      }
    },
    cancel(reason) {
      done();
      return reader.cancel(reason);
    },
  });
  return { ...res, body };
}

const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]);

/**
 * A failed connect never reached the backend: always safe. A reset before the
 * first response byte may have reached it: safe only for an idempotent request
 * without a body (RFC 9110 §9.2.2), since the body stream cannot be replayed.
 */
function retryable(err: ProxyError, request: UpstreamRequest): boolean {
  if (err.safeToRetry) return true;
  return err.code === "RESET_BEFORE_RESPONSE" && request.body === null && IDEMPOTENT.has(request.method);
}

interface Exchanged {
  backend: Backend;
  response: UpstreamResponse;
  placement: Placement;
}

/**
 * Tries backends until one answers or the retry budget is spent. Only errors
 * that prove the backend never saw the request (a failed or timed-out connect)
 * are retried, so a non-idempotent request is never sent twice.
 */
async function exchange(
  pool: Pool,
  first: PlaceResult,
  facts: RequestFacts,
  request: UpstreamRequest,
  signal: AbortLike,
  deps: ProxyDeps,
  bodyIdleMs: number,
): Promise<Exchanged> {
  const tried = new Set<string>();
  let placed: PlaceResult | null = first;
  let lastError: ProxyError | null = null;
  for (let attempt = 0; placed && attempt <= pool.settings.retries; attempt++) {
    const { placement } = placed;
    const backend = pool.get(placement.backendId) as Backend;
    tried.add(backend.id);
    if (backend.inflight < backend.maxConn) backend.inflight++;
    else await waitForSlot(backend, pool.settings.queueTimeoutMs, signal);
    try {
      const response = await deps.upstream.request(backend.target, request, {
        connectTimeoutMs: pool.settings.connectTimeoutMs,
        responseTimeoutMs: pool.settings.responseTimeoutMs,
        bodyIdleMs,
        signal,
      });
      return { backend, response: releaseWhenDone(response, backend), placement };
    } catch (e) {
      release(backend);
      // A stalled upload is the client's doing: no backend failure, no retry (the body is partly spent).
      if (e instanceof ProxyError && e.code === "CLIENT_TIMEOUT") throw e;
      // The client went away (the upstream call rejects with the abort reason): not the backend's fault.
      if (signal.aborted) throw new ProxyError("BAD_REQUEST", "client went away");
      const err = e instanceof ProxyError ? e : new ProxyError("CONNECT_FAILED", String(e));
      deps.log.warn("upstream failed", { pool: pool.name, backend: backend.id, code: err.code, attempt });
      backend.errors++;
      if (err.code === "CONNECT_FAILED" || err.code === "CONNECT_TIMEOUT")
        deps.metrics.connectError(pool.name, backend.id);
      if (
        err.code === "CONNECT_FAILED" ||
        err.code === "CONNECT_TIMEOUT" ||
        err.code === "RESPONSE_TIMEOUT"
      ) {
        deps.health.failed(pool, backend, err.code);
      }
      lastError = err;
      if (!retryable(err, request) || signal.aborted) break;
      placed = pool.chain.place(facts, tried, placement);
    }
  }
  throw lastError ?? new ProxyError("NO_BACKEND", `pool ${pool.name}`);
}

/** Cache-Control for a response that sets a session cookie: a shared cache must not hand it to another user. */
export function privateCacheControl(current: string | null): string | null {
  if (current && /(^|,)\s*(private|no-store|no-cache)\b/i.test(current)) return null;
  return current ? `private, ${current}` : "private";
}

/** Builds the client's Response from the backend's, applying persistence effects. */
export function toClientResponse(
  res: UpstreamResponse,
  method: string,
  effects: readonly Effect[] = [],
  responded?: () => void,
  /** A streamed body Bun does not pull for this long is cut (the client stopped reading); 0: never. */
  clientIdleMs = 0,
): Response {
  const headers = clientResponseHeaders(res.headers);
  if (effects.length) applyEffects(headers, effects);
  const bodyless = method === "HEAD" || res.status === 204 || res.status === 304;
  if (res.contentLength !== null && res.status !== 204 && (bodyless || !(res.body instanceof Uint8Array))) {
    // Bun keeps an explicit Content-Length on a streamed or HEAD response instead of chunking.
    headers.push(["content-length", String(res.contentLength)]);
  }
  let body = bodyless ? null : res.body;
  // Only a stream gets the wrapper (and its timer): a body that arrived whole is handed over at once.
  if (body instanceof ReadableStream) {
    if (responded || clientIdleMs > 0) body = guardStream(body, clientIdleMs, responded);
  } else responded?.();
  return new Response(body, {
    status: res.status,
    statusText: res.statusText,
    headers,
  });
}

/**
 * The persistence rules' effects on the client's header pairs: a Set-Cookie
 * rewritten (by its position among the response's Set-Cookies, as the rules
 * saw them in responseFacts) or added, and Cache-Control made private.
 */
function applyEffects(headers: [string, string][], effects: readonly Effect[]): void {
  const cookieAt: number[] = [];
  headers.forEach(([name], i) => {
    if (name.toLowerCase() === "set-cookie") cookieAt.push(i);
  });
  let cachePrivate = false;
  for (const e of effects) {
    if (e.kind === "rewrite-set-cookie") {
      const at = cookieAt[e.index];
      if (at !== undefined) headers[at] = ["set-cookie", e.header];
    } else if (e.kind === "set-cookie") headers.push(["set-cookie", e.header]);
    else if (e.kind === "cache-private") cachePrivate = true;
  }
  if (!cachePrivate) return;
  // Several Cache-Control lines are one list (RFC 9110 §5.3): judged together, replaced by one.
  const current = headers.filter(([name]) => name.toLowerCase() === "cache-control").map(([, v]) => v);
  const cc = privateCacheControl(current.length ? current.join(", ") : null);
  if (cc === null) return;
  const kept = headers.filter(([name]) => name.toLowerCase() !== "cache-control");
  headers.length = 0;
  headers.push(...kept, ["cache-control", cc]);
}

function responseFacts(res: UpstreamResponse, info: RequestInfo): ResponseFacts {
  const setCookies: string[] = [];
  let location: string | null = null;
  let cacheControl: string | null = null;
  for (const [name, value] of res.headers) {
    // Most fields are none of the three: their length rules them out without lowercasing.
    const n = name.length;
    if (n !== 10 && n !== 8 && n !== 13) continue;
    const lower = name.toLowerCase();
    if (lower === "set-cookie") setCookies.push(value);
    else if (lower === "location") location = value;
    else if (lower === "cache-control") cacheControl = value;
  }
  return { setCookies, location, cacheControl, secure: info.listener.protocol === "https" };
}

/** Places a request in its pool, auditing rejected tokens. Null: no eligible backend. */
export function place(
  pool: Pool,
  facts: RequestFacts,
  info: RequestInfo,
  deps: ProxyDeps,
): PlaceResult | null {
  const placed = pool.chain.place(facts);
  const common = { listener: info.listener.name, pool: pool.name, client: facts.clientIp };
  for (const r of placed?.rejections ?? []) {
    deps.metrics.rejected(r.reason);
    deps.metrics.decision(pool.name, r.rule, "rejected");
    deps.audit.emit("persistence.rejected", { ...common, rule: r.rule, reason: r.reason });
    if (r.reason === "expired") deps.audit.emit("session.expired", { ...common, rule: r.rule });
  }
  return placed;
}

function auditPlacement(
  deps: ProxyDeps,
  info: RequestInfo,
  pool: Pool,
  facts: RequestFacts,
  first: Placement,
  final: Placement,
) {
  // A returning session on its own backend, the common case, is no event.
  if (final.outcome !== "new" && final.outcome !== "repinned" && final.backendId === first.backendId) return;
  const common = {
    listener: info.listener.name,
    pool: pool.name,
    client: facts.clientIp,
    backend: final.backendId,
    rule: final.rule,
  };
  // A pool without persistence rules has no sessions to speak of.
  if (final.outcome === "new") {
    if (pool.chain.rules.length) deps.audit.emit("session.created", common);
  } else if (final.outcome === "repinned" || final.backendId !== first.backendId) {
    const pinnedTo = first.decisions.find((d) => d.kind === "pinned");
    const from = pinnedTo?.kind === "pinned" ? pinnedTo.backendId : first.backendId;
    const why = final.backendId !== first.backendId ? "connect-failed" : "backend-unavailable";
    deps.audit.emit("session.repinned", { ...common, from, to: final.backendId, why });
  }
}

export async function forwardHttp(req: Request, info: RequestInfo, deps: ProxyDeps): Promise<Response> {
  const target = requestTarget(req.url);
  let pool: Pool | null = null;
  try {
    pool = poolFor(req, target, info);
    const facts = requestFacts(req, target, info);
    if (deps.cluster) await prefetchLearned(pool, facts, deps);
    const placed = place(pool, facts, info, deps);
    if (!placed) throw new ProxyError("NO_BACKEND", `pool ${pool.name}`);
    const { body, bodyLength } = bodyOf(req);
    const cookie = facts.cookie === null ? null : pool.chain.backendCookie(facts.cookie);
    const request: UpstreamRequest = {
      method: req.method,
      target,
      headers: backendRequestHeaders(req.headers, forwardFacts(req, info), false, cookie),
      body,
      bodyLength,
    };
    const { backend, response, placement } = await exchange(
      pool,
      placed,
      facts,
      request,
      info.signal ?? req.signal,
      deps,
      info.listener.clientIdleMs,
    );
    auditPlacement(deps, info, pool, facts, placed.placement, placement);
    record(deps, info, pool, backend, placement, response.status);
    const effects = pool.chain.remember(facts, placement, responseFacts(response, info));
    accessLog(deps, info, req, target, pool.name, backend.id, response.status);
    return toClientResponse(response, req.method, effects, info.responded, info.listener.clientIdleMs);
  } catch (e) {
    const err = e instanceof ProxyError ? e : new ProxyError("BAD_REQUEST", String(e));
    accessLog(deps, info, req, target, pool?.name ?? "", "", err.status, err.code);
    deps.metrics.request(
      info.listener.name,
      pool?.name ?? "",
      "",
      err.status,
      (performance.now() - info.startedAt) / 1000,
    );
    info.responded?.();
    return proxyErrorResponse(err);
  }
}

/** Counters, metrics and session statistics for an answered request. */
function record(
  deps: ProxyDeps,
  info: RequestInfo,
  pool: Pool,
  backend: Backend,
  placement: Placement,
  status: number,
) {
  backend.requests++;
  if (status >= 500) backend.errors++;
  deps.health.answered(pool, backend, status);
  deps.metrics.request(
    info.listener.name,
    pool.name,
    backend.id,
    status,
    (performance.now() - info.startedAt) / 1000,
  );
  if (pool.chain.rules.length === 0) return;
  const now = Date.now();
  const pinned = placement.decisions.find((d) => d.kind !== "none");
  if (placement.outcome === "hit" && pinned?.kind === "pinned") backend.lastPinnedAt = now;
  const outcome =
    placement.outcome === "repinned" ? "repinned" : placement.outcome === "new" ? "miss" : "hit";
  deps.metrics.decision(pool.name, placement.rule === "new" ? "none" : placement.rule, outcome);
  // The deciding rule's key is the session's identity; only a brand-new session needs its key spelled out.
  const sessionId =
    pinned?.key ?? (placement.sessionKey ? Buffer.from(placement.sessionKey).toString("hex") : null);
  if (sessionId) backend.sessions.add(hashKey(sessionId), now);
}

function accessLog(
  deps: ProxyDeps,
  info: RequestInfo,
  req: Request,
  target: string,
  pool: string,
  backend: string,
  status: number,
  error?: string,
) {
  if (!info.runtime.config.accessLog) return;
  deps.log.info("request", {
    listener: info.listener.name,
    client: info.peerIp,
    method: req.method,
    // The query string can carry session IDs and tokens: it is never logged.
    path: targetPath(target),
    pool,
    backend,
    status,
    ms: Math.round(performance.now() - info.startedAt),
    ...(error ? { error } : {}),
  });
}
