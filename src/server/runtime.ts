/**
 * Everything a request needs that changes on reload, built from one Config.
 * A SIGHUP builds a new Runtime and swaps it in; requests in flight keep the
 * one they started with.
 */
import type { Config, ResolvedListener } from "../config/load.ts";
import type { Router, Runtime } from "../contracts.ts";
import { Pool } from "../pool/pool.ts";
import { trustedProxies } from "../proxy/trusted-proxies.ts";
import { createRouter } from "./routes.ts";
import { SPLIT_COOKIE, TrafficSplit } from "./split.ts";

/**
 * `fallbackKeys` seal cookies when the config names no secrets.cookieKeys (a
 * key generated at start, kept by the caller across reloads).
 */
export function buildRuntime(
  config: Config,
  previous: Runtime | undefined,
  fallbackKeys: readonly Buffer[],
): Runtime {
  const keys = config.secrets.cookieKeys?.length ? config.secrets.cookieKeys : fallbackKeys;
  const activeWindowMs = config.admin?.activeWindowMs ?? 300_000;
  const pools = new Map<string, Pool>();
  for (const [name, pool] of Object.entries(config.pools)) {
    pools.set(name, new Pool(name, pool, keys, activeWindowMs, previous?.pools.get(name)));
  }
  const routers = new Map<string, Router>();
  const listeners = new Map<string, ResolvedListener>();
  for (const l of config.listeners) {
    routers.set(
      l.name,
      createRouter(
        l.routes,
        l.pool,
        (r) => new TrafficSplit(r.split ?? [], r.splitCookie ?? SPLIT_COOKIE, keys, pools),
      ),
    );
    listeners.set(l.name, l);
  }
  return { config, pools, routers, listeners, trusted: trustedProxies(config.trustedProxies) };
}
