/**
 * Forwards one HTTP request: the pool's persistence chain places it, the
 * upstream client sends it (a failed connect is retried on the session's
 * next choice and the session re-pinned there), and the backend's response
 * goes to the client with hop-by-hop headers removed and the persistence
 * rules' cookies applied. Bodies stream both ways.
 */

import type { ProxyDeps, RequestInfo } from "../contracts.ts";
import type { Effect, Placement, ResponseFacts } from "../persistence/types.ts";
import { Placing } from "../pool/placement.ts";
import type { Backend, Pool } from "../pool/pool.ts";
import { privateCacheControl } from "./cache-control.ts";
import { ProxyError, proxyErrorResponse } from "./errors.ts";
import { backendRequestHeaders, clientResponseHeaders } from "./headers.ts";
import { IDEMPOTENT } from "./methods.ts";
import { clientUsesTls, forwardFacts, poolFor, requestFacts } from "./request-facts.ts";
import { requestTarget, targetPath } from "./request-target.ts";
import { guardStream } from "./stream-guard.ts";
import type { AbortLike, UpstreamRequest, UpstreamResponse } from "./upstream/types.ts";

function bodyOf(req: Request): { body: UpstreamRequest["body"]; bodyLength: number | null } {
  if (req.body === null) return { body: null, bodyLength: null };
  const cl = req.headers.get("content-length");
  if (cl !== null && /^\d+$/.test(cl)) return { body: req.body, bodyLength: Number(cl) };
  return { body: req.body, bodyLength: null };
}

/**
 * Under maxConn a slot is held until the response body has been passed on (or
 * failed). Without a limit the slot is released with the response head, which
 * keeps the hot path free of a wrapping stream.
 */
function releaseWhenDone(res: UpstreamResponse, backend: Backend): UpstreamResponse {
  if (!(res.body instanceof ReadableStream) || backend.maxConn === Number.POSITIVE_INFINITY) {
    backend.release();
    return res;
  }
  let released = false;
  const done = () => {
    if (!released) {
      released = true;
      backend.release();
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

/** Waits for a slot under the backend's maxConn; a pinned session waits rather than breaking. */
async function takeSlot(backend: Backend, pool: Pool, signal: AbortLike): Promise<void> {
  if (backend.tryAcquire()) return;
  const slot = await backend.acquire(pool.settings.queueTimeoutMs, signal);
  if (slot === "timeout") throw new ProxyError("NO_BACKEND", "queue timeout");
  if (slot === "aborted") throw new ProxyError("BAD_REQUEST", "client went away");
}

/**
 * Tries backends until one answers or the retry budget is spent. Only errors
 * that prove the backend never saw the request (a failed or timed-out connect)
 * are retried, so a non-idempotent request is never sent twice. Anything but
 * a ProxyError is a defect in tether: it is passed up as it is, never retried
 * and never held against the backend.
 */
async function exchange(
  placing: Placing,
  first: Placement,
  request: UpstreamRequest,
  signal: AbortLike,
  deps: ProxyDeps,
  bodyIdleMs: number,
): Promise<Exchanged> {
  const pool = placing.pool;
  let placement: Placement | null = first;
  let lastError: ProxyError | null = null;
  for (let attempt = 0; placement && attempt <= pool.settings.retries; attempt++) {
    const backend = placing.backendOf(placement);
    await takeSlot(backend, pool, signal);
    let response: UpstreamResponse;
    try {
      response = await deps.upstream.request(backend.target, request, {
        connectTimeoutMs: pool.settings.connectTimeoutMs,
        responseTimeoutMs: pool.settings.responseTimeoutMs,
        bodyIdleMs,
        signal,
      });
    } catch (e) {
      backend.release();
      if (!(e instanceof ProxyError)) throw e;
      // A stalled upload is the client's doing: no backend failure, no retry (the body is partly spent).
      if (e.code === "CLIENT_TIMEOUT") throw e;
      // The client went away (the upstream call rejects with the abort reason): not the backend's fault.
      if (signal.aborted) throw new ProxyError("BAD_REQUEST", "client went away");
      upstreamFailed(deps, pool, backend, e, attempt);
      lastError = e;
      if (!retryable(e, request)) break;
      placement = placing.next(placement);
      continue;
    }
    deps.health.answered(pool, backend, response.status);
    return { backend, response: releaseWhenDone(response, backend), placement };
  }
  throw lastError ?? new ProxyError("NO_BACKEND", `pool ${pool.name}`);
}

/** A backend failed to answer: logged, counted, and held against it when it is the backend's doing. */
export function upstreamFailed(
  deps: ProxyDeps,
  pool: Pool,
  backend: Backend,
  e: ProxyError,
  attempt: number,
) {
  deps.log.warn("upstream failed", { pool: pool.name, backend: backend.id, code: e.code, attempt });
  backend.errors++;
  if (e.code === "CONNECT_FAILED" || e.code === "CONNECT_TIMEOUT")
    deps.metrics.connectError(pool.name, backend.id);
  if (e.code === "CONNECT_FAILED" || e.code === "CONNECT_TIMEOUT" || e.code === "RESPONSE_TIMEOUT")
    deps.health.failed(pool, backend, e.code);
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

export function responseFacts(res: UpstreamResponse, secure: boolean): ResponseFacts {
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
  return { setCookies, location, cacheControl, secure };
}

export async function forwardHttp(req: Request, info: RequestInfo, deps: ProxyDeps): Promise<Response> {
  const target = requestTarget(req.url);
  let pool: Pool | null = null;
  try {
    pool = poolFor(req, target, info);
    const facts = requestFacts(req, target, info);
    const placing = new Placing(pool, facts, info.listener.name, deps);
    if (deps.cluster) await placing.prefetch();
    const first = placing.start();
    if (!first) throw new ProxyError("NO_BACKEND", `pool ${pool.name}`);
    const { body, bodyLength } = bodyOf(req);
    const cookie = facts.cookie === null ? null : pool.chain.backendCookie(facts.cookie);
    const fwd = forwardFacts(req, info);
    const request: UpstreamRequest = {
      method: req.method,
      target,
      headers: backendRequestHeaders(req.headers, fwd, false, cookie),
      body,
      bodyLength,
    };
    const { backend, response, placement } = await exchange(
      placing,
      first,
      request,
      info.signal ?? req.signal,
      deps,
      info.listener.clientIdleMs,
    );
    placing.settle(placement);
    record(deps, info, pool, backend, response.status);
    const effects = pool.chain.remember(facts, placement, responseFacts(response, clientUsesTls(req, fwd)));
    accessLog(deps, info, req, target, pool.name, backend.id, response.status);
    return toClientResponse(response, req.method, effects, info.responded, info.listener.clientIdleMs);
  } catch (e) {
    const err = e instanceof ProxyError ? e : unexpected(e, deps, info);
    accessLog(deps, info, req, target, pool?.name ?? "", "", err.status, err.code);
    info.responded?.();
    return failedResponse(err, deps, info, pool);
  }
}

/** The client's answer to a request tether could not forward, counted in the metrics. */
export function failedResponse(
  err: ProxyError,
  deps: ProxyDeps,
  info: RequestInfo,
  pool: Pool | null,
): Response {
  deps.metrics.request(
    info.listener.name,
    pool?.name ?? "",
    "",
    err.status,
    (performance.now() - info.startedAt) / 1000,
  );
  return proxyErrorResponse(err);
}

/** A throw that is not a ProxyError is a defect in tether: logged once with its stack, answered 500. */
export function unexpected(e: unknown, deps: Pick<ProxyDeps, "log">, info: RequestInfo): ProxyError {
  deps.log.error("request failed: internal error", {
    listener: info.listener.name,
    error: e instanceof Error ? (e.stack ?? e.message) : String(e),
  });
  return new ProxyError("INTERNAL", e instanceof Error ? e.message : String(e));
}

/** Counters and metrics for an answered request. */
export function record(deps: ProxyDeps, info: RequestInfo, pool: Pool, backend: Backend, status: number) {
  backend.requests++;
  if (status >= 500) backend.errors++;
  deps.metrics.request(
    info.listener.name,
    pool.name,
    backend.id,
    status,
    (performance.now() - info.startedAt) / 1000,
  );
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
