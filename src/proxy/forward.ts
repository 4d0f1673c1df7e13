/**
 * Forwards one HTTP request: pick a backend, send, retry a failed connect on
 * another backend, and hand the backend's response to the client with
 * hop-by-hop headers removed. Bodies stream both ways; nothing is buffered
 * beyond the upstream client's small queues.
 */
import type { ResolvedListener } from "../config/load.ts";
import type { Logger } from "../log.ts";
import type { Backend, Pool } from "../pool/pool.ts";
import type { Runtime } from "../server/runtime.ts";
import { ProxyError, proxyErrorResponse } from "./errors.ts";
import { backendRequestHeaders, clientResponseHeaders, type ForwardFacts } from "./headers.ts";
import { requestTarget, targetPath } from "./request-target.ts";
import type { UpstreamClient } from "./upstream/client.ts";
import type { UpstreamRequest, UpstreamResponse } from "./upstream/types.ts";

export interface ProxyDeps {
  upstream: UpstreamClient;
  log: Logger;
}

/** What the listener knows about the request before any backend is chosen. */
export interface RequestInfo {
  listener: ResolvedListener;
  runtime: Runtime;
  peerIp: string;
  startedAt: number;
}

export function forwardFacts(req: Request, info: RequestInfo): ForwardFacts {
  return {
    peerIp: info.peerIp,
    peerTrusted: info.runtime.trusted.has(info.peerIp),
    proto: info.listener.protocol,
    host: req.headers.get("host") ?? "",
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
 * Tries backends until one answers or the retry budget is spent. Only errors
 * that prove the backend never saw the request (a failed or timed-out connect)
 * are retried, so a non-idempotent request is never sent twice.
 */
async function exchange(
  pool: Pool,
  request: UpstreamRequest,
  signal: AbortSignal,
  deps: ProxyDeps,
): Promise<{ backend: Backend; response: UpstreamResponse }> {
  const tried = new Set<Backend>();
  let lastError: ProxyError | null = null;
  for (let attempt = 0; attempt <= pool.settings.retries; attempt++) {
    const backend = pool.pickNew(tried);
    if (!backend) break;
    tried.add(backend);
    backend.inflight++;
    try {
      const response = await deps.upstream.request(backend.target, request, {
        connectTimeoutMs: pool.settings.connectTimeoutMs,
        responseTimeoutMs: pool.settings.responseTimeoutMs,
        signal,
      });
      return { backend, response };
    } catch (e) {
      const err = e instanceof ProxyError ? e : new ProxyError("CONNECT_FAILED", String(e));
      deps.log.warn("upstream failed", { pool: pool.name, backend: backend.id, code: err.code, attempt });
      lastError = err;
      if (!err.safeToRetry || signal.aborted) break;
    } finally {
      backend.inflight--;
    }
  }
  throw lastError ?? new ProxyError("NO_BACKEND", `pool ${pool.name}`);
}

/** Builds the client's Response from the backend's, keeping Content-Length when known. */
export function toClientResponse(res: UpstreamResponse, method: string): Response {
  const headers = clientResponseHeaders(res.headers);
  const bodyless = method === "HEAD" || res.status === 204 || res.status === 304;
  if (res.contentLength !== null && res.status !== 204 && (bodyless || !(res.body instanceof Uint8Array))) {
    // Bun keeps an explicit Content-Length on a streamed or HEAD response instead of chunking.
    headers.set("content-length", String(res.contentLength));
  }
  return new Response(bodyless ? null : res.body, {
    status: res.status,
    statusText: res.statusText,
    headers,
  });
}

export async function forwardHttp(req: Request, info: RequestInfo, deps: ProxyDeps): Promise<Response> {
  const target = requestTarget(req.url);
  let pool: Pool | null = null;
  try {
    pool = poolFor(req, target, info);
    const { body, bodyLength } = bodyOf(req);
    const request: UpstreamRequest = {
      method: req.method,
      target,
      headers: backendRequestHeaders(req.headers, forwardFacts(req, info)),
      body,
      bodyLength,
    };
    const { backend, response } = await exchange(pool, request, req.signal, deps);
    accessLog(deps, info, req, target, pool.name, backend.id, response.status);
    return toClientResponse(response, req.method);
  } catch (e) {
    const err = e instanceof ProxyError ? e : new ProxyError("BAD_REQUEST", String(e));
    accessLog(deps, info, req, target, pool?.name ?? "", "", err.status, err.code);
    return proxyErrorResponse(err);
  }
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
