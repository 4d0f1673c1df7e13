/**
 * The control plane of one thread, by role: snapshots, health checks, cluster
 * sync through Redis and the admin listener. A single process runs all of it;
 * a primary runs all of it but cluster lookups (it serves no traffic); a
 * worker runs only what traffic needs (passive health marks and cluster
 * lookups) and leaves the rest to its primary. The data plane (listeners) is
 * data-plane.ts; app.ts composes the two.
 */
import { randomBytes } from "node:crypto";
import type { Server } from "bun";
import { dashboardHtml } from "../admin/dashboard.ts";
import type { Metrics } from "../admin/metrics.ts";
import { startAdmin } from "../admin/server.ts";
import type { Audit } from "../audit.ts";
import type { Config } from "../config/load.ts";
import type { Member } from "../config/members.ts";
import type { ClusterLookup, Runtime } from "../contracts.ts";
import { DnsDiscovery } from "../discovery/dns-watcher.ts";
import type { Logger } from "../log.ts";
import type { OperatorState } from "../pool/drain.ts";
import { HealthMonitor } from "../pool/health.ts";
import { ClusterSync } from "../state/cluster.ts";
import { startSnapshots } from "../state/persist.ts";
import { healthProbes } from "./health-probes.ts";
import type { Membership } from "./membership.ts";
import { shareApiBackends } from "./share-backends.ts";

export type Role = "single" | "primary" | "worker";

/** Where changes made in this thread go (to other threads) and where others' changes are applied. */
export interface ControlPlaneLinks {
  onStateChange?: (pool: string, backend: string, state: OperatorState) => void;
  onHealthChange?: (pool: string, backend: string, down: boolean) => void;
  onPassiveVerdict?: (pool: string, backend: string, untilMs: number, reason: string) => void;
  /** Entries and states another instance shared through Redis. */
  applyLearned(pool: string, table: string, key: number, backendId: string, expiresAtSec: number): void;
  /** Sets an operator state here (the backend, its drain deadline's timer); the caller shares it. */
  applyState(pool: string, backend: string, state: OperatorState): void;
}

export interface ControlPlane {
  readonly health: HealthMonitor;
  /** Learned sessions other instances hold, for placement (null: none, or the primary). */
  readonly lookups: ClusterLookup | null;
  readonly cluster: ClusterSync | null;
  readonly admin: { server: Server<undefined>; token: string; generated: boolean } | null;
  /** True when the snapshot restored operator states (the runtime must be rebuilt to apply them). */
  readonly loadedStates: boolean;
  /** After a reload: health checks follow the new pools. */
  restarted(): void;
  stop(): Promise<void>;
}

export interface ControlPlaneContext {
  config: Config;
  role: Role;
  log: Logger;
  audit: Audit;
  metrics: Metrics;
  current: () => Runtime;
  /** Backend states set by an operator, "pool\0id" → state; outlive reloads. */
  operatorStates: Map<string, OperatorState>;
  /** Backends added while running; null in a worker. */
  membership: Membership | null;
  /** Members saved in the snapshot, restored before its learned entries are (they may name them). */
  restoreBackends(members: Member[]): number;
  links: ControlPlaneLinks;
}

export function startControlPlane(ctx: ControlPlaneContext): ControlPlane {
  const { config, role, log, audit, metrics, current, operatorStates, links } = ctx;
  const snapshots =
    role === "worker"
      ? { loadedStates: false, async stop() {} }
      : startSnapshots(config, current, operatorStates, log, ctx.restoreBackends);

  const probes = healthProbes();
  const onPassiveVerdict = links.onPassiveVerdict;
  const health = new HealthMonitor({
    pools: () => current().pools.values(),
    probes,
    log,
    audit,
    onActiveChange: (pool, b, down) => links.onHealthChange?.(pool.name, b.id, down),
    ...(onPassiveVerdict
      ? { reportPassive: (pool, b, untilMs, reason) => onPassiveVerdict(pool.name, b.id, untilMs, reason) }
      : {}),
  });
  // Active checks and the passive sweep run once, in the primary; workers report passive verdicts to it.
  if (role !== "worker") health.start();

  const cluster = config.redisUrl && config.cluster ? startCluster(config, log, links) : null;
  const membership = ctx.membership;
  if (cluster && membership) shareApiBackends(cluster, membership, log);
  const discovery = membership
    ? new DnsDiscovery(
        {
          discovered: (pool) =>
            membership
              .list()
              .filter((m) => m.pool === pool && m.source === "dns" && !m.removing)
              .map((m) => ({ id: m.id, url: m.url, weight: m.weight, priority: 0 })),
          apply: (pool, upsert, remove) => membership.batch(pool, "dns", upsert, remove),
          isDown: (pool, id) => current().pools.get(pool)?.get(id)?.down ?? false,
          stopped: (pool) => membership.forgetSource(pool, "dns"),
          counted: (pool, outcome) => metrics.discoveryLookup(pool, outcome),
        },
        log,
      )
    : null;
  discovery?.follow(current().config);
  const admin = config.admin && role !== "worker" ? startAdminListener(ctx, cluster) : null;

  return {
    health,
    // Lookups only where traffic is served; the primary shares states.
    lookups: role === "primary" ? null : cluster,
    cluster,
    admin,
    loadedStates: snapshots.loadedStates,
    restarted() {
      if (role !== "worker") health.start();
      // A reload may have changed a pool's discover block.
      discovery?.follow(current().config);
    },
    async stop() {
      discovery?.stop();
      await snapshots.stop();
      await cluster?.stop();
      health.stop();
      probes.close();
      admin?.server.stop(true);
    },
  };

  function startAdminListener(
    c: ControlPlaneContext,
    sync: ClusterSync | null,
  ): { server: Server<undefined>; token: string; generated: boolean } | null {
    if (!c.config.admin) return null;
    const generated = !c.config.admin.token;
    const token = c.config.admin.token ?? randomBytes(24).toString("base64url");
    const server = startAdmin(
      c.config.admin,
      {
        current,
        token,
        metrics,
        dashboardHtml,
        async addBackend(pool, body) {
          if (!ctx.membership) return { ok: false, conflict: false, reason: "not available here" };
          return ctx.membership.add({ pool: pool.name, ...body, source: "api" }, "admin");
        },
        async removeBackend(pool, backend) {
          if (backend.source !== "api")
            return {
              ok: false,
              reason:
                backend.source === "config"
                  ? `backend "${backend.id}" is in the config file: remove it there and reload`
                  : `backend "${backend.id}" was discovered by DNS: it leaves when its record does`,
            };
          await ctx.membership?.remove(pool.name, backend.id, "admin");
          return { ok: true };
        },
        setState(pool, backend, s) {
          const before = backend.state;
          links.applyState(pool.name, backend.id, s);
          links.onStateChange?.(pool.name, backend.id, s);
          sync?.publishState(pool.name, backend.id, s);
          if (before !== s.state || s.until > 0) {
            const fields = {
              pool: pool.name,
              backend: backend.id,
              from: before,
              state: s.state,
              ...(s.until > 0 ? { deadline: new Date(s.until).toISOString() } : {}),
              by: "admin",
            };
            log.info("backend state changed", fields);
            audit.emit("backend.state", fields);
          }
        },
      },
      log,
    );
    if (generated) log.warn("admin token generated at start; the dashboard URL with it is printed on stderr");
    return { server, token, generated };
  }
}

function startCluster(config: Config, log: Logger, links: ControlPlaneLinks): ClusterSync | null {
  if (!config.redisUrl || !config.cluster) return null;
  const sync = new ClusterSync(
    {
      url: config.redisUrl,
      prefix: config.cluster.redis.prefix,
      lookupTimeoutMs: config.cluster.redis.lookupTimeoutMs,
    },
    log,
    {
      applyLearned: (pool, table, key, backendId, exp) =>
        links.applyLearned(pool, table, key, backendId, exp),
      applyState: (pool, backend, state) => links.applyState(pool, backend, state),
    },
  );
  void sync.start().then(async () => {
    for (const [pool, backend, state] of await sync.loadStates()) links.applyState(pool, backend, state);
    await sync.syncBackends();
  });
  return sync;
}
