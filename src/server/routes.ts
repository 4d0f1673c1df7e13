/**
 * Host and path-prefix routing for a listener: the first matching route names
 * the pool; the listener's "pool" is the fallback. Pure.
 */
import type { RouteConfig } from "../config/schema.ts";
import type { Router, TrafficSplitter } from "../contracts.ts";

/** "Example.COM:8443" → "example.com"; "[::1]:80" → "[::1]". */
export function hostWithoutPort(host: string): string {
  const h = host.toLowerCase();
  if (h.startsWith("[")) return h.slice(0, h.indexOf("]") + 1);
  const colon = h.indexOf(":");
  const bare = colon === -1 ? h : h.slice(0, colon);
  return bare.endsWith(".") ? bare.slice(0, -1) : bare;
}

function hostMatches(pattern: string, host: string): boolean {
  const p = pattern.toLowerCase();
  if (p.startsWith("*.")) return host.endsWith(p.slice(1)) && host.length > p.length - 1;
  return host === p;
}

/**
 * `splitFor` builds a route's traffic split (server/split.ts) for a route
 * with "split" instead of "pool"; it is built once, here, not per request.
 */
export function createRouter(
  routes: readonly RouteConfig[],
  fallbackPool: string,
  splitFor?: (route: RouteConfig) => TrafficSplitter,
): Router {
  if (routes.length === 0) return { pick: () => fallbackPool };
  const targets = routes.map((r): string | TrafficSplitter =>
    r.split !== undefined && splitFor !== undefined ? splitFor(r) : (r.pool as string),
  );
  return {
    pick(rawHost, path) {
      const host = rawHost ? hostWithoutPort(rawHost) : "";
      for (let i = 0; i < routes.length; i++) {
        const r = routes[i] as RouteConfig;
        if (r.host !== undefined && !hostMatches(r.host, host)) continue;
        if (r.pathPrefix !== undefined && !path.startsWith(r.pathPrefix)) continue;
        return targets[i] as string | TrafficSplitter;
      }
      return fallbackPool;
    },
  };
}
