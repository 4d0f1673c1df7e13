/**
 * The admin API: read pools, backends and sessions; change a backend's state;
 * Prometheus metrics. Every /api and /metrics route needs the Bearer token;
 * /healthz and the dashboard page do not (the page asks for the token).
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { formatPath } from "../config/load.ts";
import { apiBackendSchema, type BackendState } from "../config/schema.ts";
import type { Runtime } from "../contracts.ts";
import type { OperatorState } from "../pool/drain.ts";
import type { Backend, Pool } from "../pool/pool.ts";
import type { Metrics } from "./metrics.ts";

export interface AdminContext {
  current(): Runtime;
  token: string;
  metrics: Metrics;
  dashboardHtml: string;
  /** Applies an operator's state change (a drain with its deadline); it outlives reloads. */
  setState(pool: Pool, backend: Backend, state: OperatorState): void;
  /** Adds a backend to a pool; resolves once every thread serves it. */
  addBackend(
    pool: Pool,
    body: NewBackend,
  ): Promise<{ ok: true } | { ok: false; conflict: boolean; reason: string }>;
  /** Starts removing an API-added backend (it drains, then leaves). */
  removeBackend(pool: Pool, backend: Backend): Promise<{ ok: true } | { ok: false; reason: string }>;
}

export interface NewBackend {
  id: string;
  url: string;
  weight: number;
}

const STATES: readonly BackendState[] = ["ready", "drain", "maint"];

const json = (body: unknown, status = 200) =>
  new Response(`${JSON.stringify(body)}\n`, {
    status,
    headers: { "content-type": "application/json", "cache-control": "no-store" },
  });
const problem = (status: number, error: string) => json({ error }, status);
/** 405 names the methods the path takes (RFC 9110 §15.5.6). */
const notAllowed = (allow: string, error: string) => {
  const res = problem(405, error);
  res.headers.set("allow", allow);
  return res;
};

/** Constant-time comparison: both sides are hashed to equal length first. */
export function tokenMatches(header: string | null, token: string): boolean {
  if (!header?.startsWith("Bearer ")) return false;
  const a = createHash("sha256").update(header.slice(7)).digest();
  const b = createHash("sha256").update(token).digest();
  return timingSafeEqual(a, b);
}

export function backendView(pool: Pool, b: Backend, now = Date.now()) {
  const t = b.target;
  const host = t.hostname.includes(":") ? `[${t.hostname}]` : t.hostname;
  return {
    pool: pool.name,
    id: b.id,
    url: `${t.tls ? "https" : "http"}://${host}:${t.port}`,
    state: b.state,
    source: b.source,
    removing: b.removing,
    health: b.down ? "down" : "up",
    weight: b.weight,
    inflight: b.inflight,
    websockets: b.websockets,
    activeSessions: b.sessions.count(now),
    requests: b.requests,
    errors: b.errors,
    lastPinnedAt: b.lastPinnedAt ? new Date(b.lastPinnedAt).toISOString() : null,
    drain: drainView(b, now),
  };
}

/**
 * A drain with a deadline, as an operator needs it: when the backend goes to
 * maintenance, the time left, and the sessions still pinned to it (the
 * sessions seen on it within the active window, an estimate: a session that
 * has not come back since cannot be told from one that ended). Null otherwise.
 */
export function drainView(b: Backend, now: number) {
  if (b.drainUntil <= 0 || b.state !== "drain") return null;
  return {
    deadline: new Date(b.drainUntil).toISOString(),
    leftMs: Math.max(0, b.drainUntil - now),
    sessionsPinned: b.sessions.count(now),
  };
}

/**
 * Validates a PUT body: {"state": "ready" | "drain" | "maint"}, and with
 * "drain" an optional "deadlineMs" (from now). A drain without one gets the
 * pool's drainDeadlineMs (0: none). The deadline comes back as an absolute
 * time (ms since the epoch).
 */
export function parseStateBody(
  text: string,
  nowMs: number,
  poolDeadlineMs = 0,
): OperatorState | { error: string } {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return { error: 'body must be JSON, for example {"state": "drain"}' };
  }
  if (typeof body !== "object" || body === null || Array.isArray(body))
    return { error: "body must be a JSON object" };
  const extra = Object.keys(body).filter((k) => k !== "state" && k !== "deadlineMs");
  if (extra.length) return { error: `unknown key "${extra[0]}"` };
  const { state, deadlineMs } = body as { state?: unknown; deadlineMs?: unknown };
  if (typeof state !== "string" || !STATES.includes(state as BackendState)) {
    return { error: 'state must be "ready", "drain" or "maint"' };
  }
  if (deadlineMs === undefined)
    return {
      state: state as BackendState,
      until: state === "drain" && poolDeadlineMs > 0 ? nowMs + poolDeadlineMs : 0,
    };
  if (state !== "drain") return { error: 'deadlineMs goes only with "state": "drain"' };
  if (typeof deadlineMs !== "number" || !Number.isSafeInteger(deadlineMs) || deadlineMs < 1)
    return { error: "deadlineMs must be a whole number of milliseconds, at least 1" };
  return { state: "drain", until: nowMs + deadlineMs };
}

/** Validates a POST body: {"id", "url", "weight"?}, as the config file would; every reason is given. */
export function parseNewBackendBody(text: string): NewBackend | { errors: string[] } {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return { errors: ['body must be JSON, for example {"id": "app-4", "url": "http://10.0.0.14:8080"}'] };
  }
  const parsed = apiBackendSchema.safeParse(body);
  if (!parsed.success)
    return {
      errors: parsed.error.issues.map((i) => {
        const at = formatPath(i.path);
        const message =
          i.code === "unrecognized_keys"
            ? `unknown key${i.keys.length > 1 ? "s" : ""} ${i.keys.map((k) => `"${k}"`).join(", ")}`
            : i.code === "invalid_type" && i.message.includes("received undefined")
              ? "is required"
              : i.message;
        return at ? `${at}: ${message}` : message;
      }),
    };
  return parsed.data;
}

/**
 * The page's Content-Security-Policy: its inline scripts are allowed by hash,
 * so an injected inline handler would not run even if escaping ever failed.
 */
export function dashboardCsp(html: string): string {
  const hashes = [...html.matchAll(/<script>([\s\S]*?)<\/script>/g)].map(
    (m) =>
      `'sha256-${createHash("sha256")
        .update(m[1] as string)
        .digest("base64")}'`,
  );
  return [
    "default-src 'none'",
    `script-src ${hashes.join(" ") || "'none'"}`,
    "style-src 'unsafe-inline'",
    "connect-src 'self'",
    "img-src 'self' data:",
    "form-action 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
  ].join("; ");
}

const cspCache = new WeakMap<AdminContext, string>();

/** decodeURIComponent, or null for a malformed escape such as "%" or "%E0%A4" (which it throws on). */
function decodePathSegment(s: string): string | null {
  try {
    return decodeURIComponent(s);
  } catch {
    return null;
  }
}

export async function handleAdmin(req: Request, ctx: AdminContext): Promise<Response> {
  const url = new URL(req.url);
  const path = url.pathname;
  if (path === "/healthz") return new Response("ok\n");
  if (path === "/" && (req.method === "GET" || req.method === "HEAD")) {
    let csp = cspCache.get(ctx);
    if (!csp) {
      csp = dashboardCsp(ctx.dashboardHtml);
      cspCache.set(ctx, csp);
    }
    return new Response(ctx.dashboardHtml, {
      headers: {
        "content-type": "text/html; charset=utf-8",
        "cache-control": "no-store",
        "content-security-policy": csp,
        "referrer-policy": "no-referrer",
      },
    });
  }
  if (!path.startsWith("/api/") && path !== "/metrics") return problem(404, "not found");
  if (!tokenMatches(req.headers.get("authorization"), ctx.token)) {
    return new Response(`${JSON.stringify({ error: "unauthorized" })}\n`, {
      status: 401,
      headers: {
        "content-type": "application/json",
        "cache-control": "no-store",
        "www-authenticate": 'Bearer realm="tether"',
      },
    });
  }
  const runtime = ctx.current();
  const now = Date.now();
  if (path === "/metrics" && req.method === "GET") {
    const { body, contentType } = await ctx.metrics.text();
    return new Response(body, { headers: { "content-type": contentType } });
  }
  if (path === "/api/pools" && req.method === "GET") {
    const pools = [...runtime.pools.values()].map((p) => ({
      name: p.name,
      rules: p.chain.rules.map((r) => r.name),
      backends: p.backends.map((b) => backendView(p, b, now)),
    }));
    return json({ pools });
  }
  if (path === "/api/backends" && req.method === "GET") {
    return json({
      backends: [...runtime.pools.values()].flatMap((p) => p.backends.map((b) => backendView(p, b, now))),
    });
  }
  if (path === "/api/sessions" && req.method === "GET") {
    const name = url.searchParams.get("pool");
    const pool = name ? runtime.pools.get(name) : undefined;
    if (!pool)
      return problem(
        name ? 404 : 400,
        name ? `no pool named "${name}"` : "the pool query parameter is required",
      );
    const learned = Object.fromEntries([...pool.chain.tables].map(([k, t]) => [k, t.size]));
    return json({
      pool: pool.name,
      activeWindowMs: runtime.config.admin?.activeWindowMs ?? 300_000,
      backends: pool.backends.map((b) => ({
        id: b.id,
        state: b.state,
        activeSessions: b.sessions.count(now),
        drain: drainView(b, now),
      })),
      learnedEntries: learned,
    });
  }
  const add = /^\/api\/backends\/([^/]+)$/.exec(path);
  if (add) {
    if (req.method !== "POST") return notAllowed("POST", 'use POST with {"id", "url", "weight"}');
    const poolName = decodePathSegment(add[1] as string);
    if (poolName === null) return problem(400, "malformed percent-encoding in the path");
    const pool = runtime.pools.get(poolName);
    if (!pool) return problem(404, `no pool named "${poolName}"`);
    const parsed = parseNewBackendBody(await req.text());
    if ("errors" in parsed) return json({ error: parsed.errors.join("; "), errors: parsed.errors }, 400);
    if (pool.get(parsed.id)) return problem(409, `pool "${pool.name}" already has a backend "${parsed.id}"`);
    const added = await ctx.addBackend(pool, parsed);
    if (!added.ok) return problem(added.conflict ? 409 : 400, added.reason);
    const now2 = Date.now();
    const p2 = ctx.current().pools.get(pool.name);
    const b2 = p2?.get(parsed.id);
    return json({ backend: p2 && b2 ? backendView(p2, b2, now2) : { pool: pool.name, ...parsed } }, 201);
  }
  const m = /^\/api\/backends\/([^/]+)\/([^/]+)$/.exec(path);
  if (m) {
    if (req.method !== "PUT" && req.method !== "DELETE")
      return notAllowed("PUT, DELETE", 'use PUT with {"state": ...}, or DELETE');
    const [poolName, backendId] = [decodePathSegment(m[1] as string), decodePathSegment(m[2] as string)];
    if (poolName === null || backendId === null)
      return problem(400, "malformed percent-encoding in the path");
    const pool = runtime.pools.get(poolName);
    const backend = pool?.get(backendId);
    if (!pool || !backend) return problem(404, "no such pool or backend");
    if (req.method === "DELETE") {
      const removed = await ctx.removeBackend(pool, backend);
      if (!removed.ok) return problem(409, removed.reason);
      const p2 = ctx.current().pools.get(pool.name);
      const b2 = p2?.get(backend.id);
      // 202: it drains now and leaves once nothing is in flight to it, or at its drain deadline (shown in "drain").
      return json({ backend: p2 && b2 ? backendView(p2, b2) : null }, 202);
    }
    const parsed = parseStateBody(await req.text(), now, pool.settings.drainDeadlineMs);
    if ("error" in parsed) return problem(400, parsed.error);
    ctx.setState(pool, backend, parsed);
    return json({ backend: backendView(pool, backend, now) });
  }
  return problem(404, "not found");
}
