/**
 * What a request's outcome leaves behind: counters on its backend, metrics,
 * the access log line, a failed attempt held against its backend, and the
 * short answer a client gets when tether could not forward the request.
 */
import type { ProxyDeps, RequestInfo } from "../contracts.ts";
import type { Backend, Pool } from "../pool/pool.ts";
import { ProxyError, proxyErrorResponse } from "./errors.ts";
import { targetPath } from "./request-target.ts";

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
  const listener = info.listener.name;
  let series = backend.requestSeries.get(listener);
  if (series === undefined) {
    series = deps.metrics.requestSeries(listener, pool.name, backend.id);
    backend.requestSeries.set(listener, series);
  }
  series.count(status, (performance.now() - info.startedAt) / 1000);
}

export function accessLog(
  deps: ProxyDeps,
  info: RequestInfo,
  req: { readonly method: string },
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
    ...(info.protocol ? { protocol: info.protocol } : {}),
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
