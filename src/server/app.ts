/**
 * The running proxy: its listeners, the live Runtime, reload and shutdown.
 */
import { randomBytes } from "node:crypto";
import type { Server } from "bun";
import { dashboardHtml } from "../admin/dashboard.ts";
import { Metrics } from "../admin/metrics.ts";
import { startAdmin } from "../admin/server.ts";
import { type Audit, createAudit, noAudit } from "../audit.ts";
import type { Config, ResolvedListener } from "../config/load.ts";
import type { BackendState } from "../config/schema.ts";
import type { Logger } from "../log.ts";
import { startPassthroughListener } from "../passthrough/listener.ts";
import { HealthMonitor } from "../pool/health.ts";
import type { ProxyDeps } from "../proxy/forward.ts";
import { UpstreamClient } from "../proxy/upstream/client.ts";
import { ClusterSync } from "../state/cluster.ts";
import { startSnapshots } from "../state/persist.ts";
import { type ListenerHandle, startListener } from "./listener.ts";
import { ensureMigrateReq } from "./reuseport-migration.ts";
import { buildRuntime, type Runtime } from "./runtime.ts";

export interface Tether {
  readonly runtime: Runtime;
  readonly listeners: ReadonlyMap<string, ListenerHandle>;
  readonly metrics: Metrics;
  /** Where session and backend events are written (the primary also writes its workers'). */
  readonly audit: Audit;
  /** States set by an operator, "pool\0id" → state. */
  readonly operatorStates: ReadonlyMap<string, BackendState>;
  /** Entries, states and health learned in another thread or instance. */
  applyLearned(pool: string, table: string, key: number, backendId: string, expiresAtSec: number): void;
  applyState(pool: string, backend: string, state: BackendState): void;
  applyHealth(pool: string, backend: string, down: boolean): void;
  /** The admin listener, when configured: its port and token (generated when the config has none). */
  readonly admin: { port: number; token: string; generated: boolean } | null;
  /** Swaps in a new config; listeners whose socket settings changed are reopened. */
  reload(config: Config): Promise<void>;
  /** Stops accepting, lets in-flight requests finish for up to graceMs, then closes everything. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Keys a running listener cannot change: a change to any of them opens a new
 * listener (Bun keeps a listener's certificate and socket options for life).
 * Routes and the default pool are read per request and change in place.
 */
function socketSettings(l: ResolvedListener): string {
  const { routes: _r, pool: _p, ...rest } = l;
  return JSON.stringify({ ...rest, certificates: l.certificates.map((c) => [c.cert, c.key, c.serverName]) });
}

async function drain(handle: ListenerHandle, graceMs: number): Promise<void> {
  handle.server.stop(false);
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline) {
    if (
      handle.inflight() === 0 &&
      handle.server.pendingRequests === 0 &&
      handle.server.pendingWebSockets === 0
    )
      break;
    await Bun.sleep(20);
  }
  await handle.server.stop(true);
}

/** True when some pool has a rule that needs cookie keys (sealing, route prefixes, table hashing). */
function needsKeys(config: Config): boolean {
  return Object.values(config.pools).some((p) =>
    p.persistence.some((r) => r.type === "cookie" || r.type === "url" || r.type === "tls-session"),
  );
}

export type Role = "single" | "primary" | "worker";

export interface StartOptions {
  /** Overrides the audit sink named in the config (tests; workers send theirs to the primary). */
  audit?: Audit;
  /**
   * single (default): everything in this thread. primary: health, admin,
   * snapshots and the state hub, no traffic. worker: traffic only.
   */
  role?: Role;
  /** Keys to seal with when the config has none (workers get the primary's). */
  fallbackKeys?: Buffer[];
  /** Entries learned here leave through this (to other threads, Redis). */
  onLearned?: (pool: string, table: string, key: number, backendId: string, expiresAtSec: number) => void;
  /** Operator state changes made here leave through this. */
  onStateChange?: (pool: string, backend: string, state: BackendState) => void;
  /** Health changes seen here leave through this. */
  onHealthChange?: (pool: string, backend: string, down: boolean) => void;
}

export function startTether(config: Config, log: Logger, opts: StartOptions = {}): Tether {
  const role = opts.role ?? "single";
  // Workers share the process (and the setting) with their primary.
  if (role !== "worker") ensureMigrateReq(log, role === "primary");
  // Without configured keys, one key generated now serves this process (and survives reloads).
  const fallbackKeys = opts.fallbackKeys ?? [randomBytes(32)];
  if (role !== "worker" && !config.secrets.cookieKeys?.length && needsKeys(config)) {
    log.warn("no secrets.cookieKeys configured: using a key generated at start", {
      consequence: "sessions will not survive a restart or span instances; run `tether keygen`",
    });
  }
  // Backend states set through the admin API outlive reloads: "pool\0id" → state.
  const operatorStates = new Map<string, BackendState>();
  // Another instance's sessions and states, through Redis, when "cluster" is configured.
  let cluster: ClusterSync | null = null;
  const learned = (pool: string, table: string, key: number, backendId: string, exp: number) => {
    opts.onLearned?.(pool, table, key, backendId, exp);
    cluster?.publishLearned(pool, table, key, backendId, exp);
  };
  const shareLearned = Boolean(opts.onLearned || config.redisUrl);
  const build = (c: Config, previous?: Runtime) => {
    const r = buildRuntime(c, previous, fallbackKeys);
    for (const pool of r.pools.values()) {
      for (const b of pool.backends) {
        const s = operatorStates.get(`${pool.name}\0${b.id}`);
        if (s) b.state = s;
      }
      for (const [name, table] of pool.chain.tables) {
        table.onLearn = shareLearned
          ? (key, backendId, exp) => learned(pool.name, name, key, backendId, exp)
          : null;
      }
    }
    return r;
  };
  let runtime = build(config);
  const noSnapshots = { loadedStates: false, stop() {} };
  const snapshots =
    role === "worker" ? noSnapshots : startSnapshots(config, () => runtime, operatorStates, log);
  if (snapshots.loadedStates) runtime = build(config, runtime);
  const current = () => runtime;
  const upstream = new UpstreamClient();
  const audit = opts.audit ?? (role === "worker" ? noAudit : createAudit(config.auditFile ?? config.audit));
  const metrics = new Metrics(current);
  const health = new HealthMonitor(current, log, audit, (pool, b, down) =>
    opts.onHealthChange?.(pool.name, b.id, down),
  );
  const deps: ProxyDeps = { upstream, log, audit, metrics, health, cluster: null };
  if (config.redisUrl && config.cluster) {
    const sync = new ClusterSync(
      {
        url: config.redisUrl,
        prefix: config.cluster.redis.prefix,
        lookupTimeoutMs: config.cluster.redis.lookupTimeoutMs,
      },
      log,
      {
        applyLearned: (pool, table, key, backendId, exp) =>
          tether.applyLearned(pool, table, key, backendId, exp),
        applyState: (pool, backend, state) => tether.applyState(pool, backend, state),
      },
    );
    cluster = sync;
    // Lookups only where traffic is served; the primary shares states.
    if (role !== "primary") deps.cluster = sync;
    void sync.start().then(async () => {
      for (const [pool, backend, state] of await sync.loadStates()) tether.applyState(pool, backend, state);
    });
  }
  const listeners = new Map<string, ListenerHandle>();
  // Workers keep passive marks of their own; active checks run once, in the primary.
  if (role !== "worker") health.start();

  let admin: { server: Server<undefined>; token: string; generated: boolean } | null = null;
  if (config.admin && role !== "worker") {
    const generated = !config.admin.token;
    const token = config.admin.token ?? randomBytes(24).toString("base64url");
    const server = startAdmin(
      config.admin,
      {
        current,
        token,
        metrics,
        dashboardHtml,
        setState(pool, backend, state) {
          const before = backend.state;
          backend.state = state;
          operatorStates.set(`${pool.name}\0${backend.id}`, state);
          opts.onStateChange?.(pool.name, backend.id, state);
          cluster?.publishState(pool.name, backend.id, state);
          if (before !== state) {
            const fields = { pool: pool.name, backend: backend.id, from: before, state, by: "admin" };
            log.info("backend state changed", fields);
            audit.emit("backend.state", fields);
          }
        },
      },
      log,
    );
    if (generated) log.warn("admin token generated at start; the dashboard URL with it is printed on stderr");
    admin = { server, token, generated };
  }

  const open = (l: ResolvedListener) => {
    // reusePort lets a replacement listener bind the same port before the old one closes, so a reload drops nothing.
    const handle =
      l.protocol === "tls-passthrough"
        ? startPassthroughListener(l, current, deps, { reusePort: true })
        : startListener(l, current, deps, { reusePort: true });
    listeners.set(l.name, handle);
    log.info("listening", {
      name: l.name,
      protocol: l.protocol,
      address: handle.server.hostname,
      port: handle.server.port,
    });
    return handle;
  };

  try {
    if (role !== "primary") for (const l of config.listeners) open(l);
  } catch (e) {
    for (const h of listeners.values()) h.server.stop(true);
    health.stop();
    admin?.server.stop(true);
    throw e;
  }

  const tether: Tether = {
    get runtime() {
      return runtime;
    },
    listeners,
    get admin() {
      return admin ? { port: admin.server.port ?? 0, token: admin.token, generated: admin.generated } : null;
    },
    metrics,
    audit,
    operatorStates,
    applyLearned(pool, table, key, backendId, expiresAtSec) {
      const p = runtime.pools.get(pool);
      if (p?.get(backendId))
        p.chain.tables.get(table)?.putHashed(key, backendId, expiresAtSec, Math.floor(Date.now() / 1000));
    },
    applyState(pool, backend, state) {
      operatorStates.set(`${pool}\0${backend}`, state);
      const b = runtime.pools.get(pool)?.get(backend);
      if (b) b.state = state;
    },
    applyHealth(pool, backend, down) {
      const b = runtime.pools.get(pool)?.get(backend);
      if (b) b.activeDown = down;
    },
    async reload(next: Config) {
      const nextNames = new Set(role === "primary" ? [] : next.listeners.map((l) => l.name));
      const retiring: ListenerHandle[] = [];
      for (const [name, handle] of listeners) {
        if (!nextNames.has(name)) {
          retiring.push(handle);
          listeners.delete(name);
        }
      }
      const opened: ListenerHandle[] = [];
      try {
        for (const l of role === "primary" ? [] : next.listeners) {
          const old = listeners.get(l.name);
          if (old && socketSettings(old.config) === socketSettings(l)) continue;
          opened.push(open(l));
          if (old) retiring.push(old);
        }
        if (role === "single" && opened.length && retiring.length) ensureMigrateReq(log, true);
      } catch (e) {
        // Could not bind a new listener: keep the old set serving and report.
        for (const h of opened) {
          h.server.stop(true);
          listeners.delete(h.config.name);
        }
        for (const h of retiring) listeners.set(h.config.name, h);
        throw e;
      }
      if (next.maxHeaderBytes !== runtime.config.maxHeaderBytes) {
        log.warn("maxHeaderBytes changes need a restart; keeping the current limit", {
          current: runtime.config.maxHeaderBytes,
        });
      }
      runtime = build(next, runtime);
      if (role !== "worker") health.start();
      for (const h of retiring) {
        log.info("listener closing", { name: h.config.name, port: h.server.port });
        void drain(h, next.shutdownGraceMs);
      }
    },
    async stop(graceMs = runtime.config.shutdownGraceMs) {
      await snapshots.stop();
      await cluster?.stop();
      await Promise.all([...listeners.values()].map((h) => drain(h, graceMs)));
      listeners.clear();
      health.stop();
      admin?.server.stop(true);
      upstream.close();
    },
  };
  return tether;
}
