/**
 * The running proxy: the live Runtime, composed from a control plane
 * (control-plane.ts: snapshots, health, cluster sync, admin) and a data plane
 * (data-plane.ts: listeners), each chosen by role, with reload and shutdown.
 */
import { randomBytes } from "node:crypto";
import { Metrics } from "../admin/metrics.ts";
import { type Audit, createAudit, noAudit } from "../audit.ts";
import type { Config } from "../config/load.ts";
import type { ClusterLookup, ListenerHandle, ProxyDeps, Runtime } from "../contracts.ts";
import type { Logger } from "../log.ts";
import { DrainTimers, effectiveState, type OperatorState } from "../pool/drain.ts";
import type { Backend } from "../pool/pool.ts";
import { UpstreamClient } from "../proxy/upstream/client.ts";
import { chainLookups } from "../state/sibling-lookup.ts";
import { type ControlPlane, type Role, startControlPlane } from "./control-plane.ts";
import { type DataPlane, type PreparedReload, startDataPlane } from "./data-plane.ts";
import { Membership } from "./membership.ts";
import { ensureMigrateReq } from "./reuseport-migration.ts";
import { buildRuntime } from "./runtime.ts";

export interface Tether {
  readonly runtime: Runtime;
  readonly listeners: ReadonlyMap<string, ListenerHandle>;
  readonly metrics: Metrics;
  /** Where session and backend events are written (the primary also writes its workers'). */
  readonly audit: Audit;
  /** States set by an operator, "pool\0id" → state (with a drain's deadline). */
  readonly operatorStates: ReadonlyMap<string, OperatorState>;
  /** Entries, states and health learned in another thread or instance. */
  applyLearned(pool: string, table: string, key: number, backendId: string, expiresAtSec: number): void;
  applyState(pool: string, backend: string, state: OperatorState): void;
  applyHealth(pool: string, backend: string, down: boolean): void;
  /**
   * A passive verdict reached in another thread: down until untilMs. The
   * primary announces it unless the backend is down by passive checks
   * already (false then); a worker applies it silently.
   */
  applyPassive(pool: string, backend: string, untilMs: number, reason: string): boolean;
  /**
   * Backends added while running (DNS, admin API) and how their changes are
   * applied; null in a worker thread, which only serves what its primary sends.
   */
  readonly membership: Membership | null;
  /** The admin listener, when configured: its port and token (generated when the config has none). */
  readonly admin: { port: number; token: string; generated: boolean } | null;
  /**
   * First half of a reload: opens the listeners the new config needs (those
   * whose socket settings changed are reopened beside the old ones). Throws,
   * with nothing left open, when it cannot. Nothing changes for traffic until
   * commit(); abort() closes what was opened.
   */
  prepare(config: Config): Promise<PreparedReload>;
  /**
   * A new config file: prepare() then commit(), with the backends added while
   * running merged in (through the membership queue, so it never crosses a
   * membership change).
   */
  reload(config: Config): Promise<void>;
  /** Stops accepting, lets in-flight requests finish for up to graceMs, then closes everything. */
  stop(graceMs?: number): Promise<void>;
}

/** Backends a reload removed take their metric series with them. */
function forgetRemoved(before: Runtime, after: Runtime, metrics: Metrics): void {
  for (const pool of before.pools.values()) {
    const next = after.pools.get(pool.name);
    for (const b of pool.backends) {
      if (next?.get(b.id) === b) continue;
      metrics.forgetBackend(pool.name, b.id);
      // A backend that left at its removal's deadline before this thread's timer fired.
      if (b.removing && b.removeUntil > 0 && Date.now() >= b.removeUntil) goAway(b);
    }
  }
}

/** Closes a backend's open WebSockets with 1001 (going away). */
function goAway(b: Backend): void {
  for (const socket of [...b.sockets]) socket.goAway();
}

/** True when some pool has a rule that needs cookie keys (sealing, route prefixes, table hashing). */
function needsKeys(config: Config): boolean {
  return Object.values(config.pools).some((p) =>
    p.persistence.some(
      (r) =>
        r.type === "cookie" ||
        r.type === "url" ||
        r.type === "tls-session" ||
        (r.type === "header" && r.mode !== "hash"),
    ),
  );
}

export type { Role } from "./control-plane.ts";
export type { PreparedReload } from "./data-plane.ts";

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
  /** Sends what onLearned queued now: called before an answer that learned something leaves. */
  flushLearned?: () => void;
  /** Workers: entries learned by the other workers of this process, asked on a local miss. */
  siblings?: ClusterLookup;
  /** Operator state changes made here leave through this. */
  onStateChange?: (pool: string, backend: string, state: OperatorState) => void;
  /** Active health check changes seen here leave through this. */
  onHealthChange?: (pool: string, backend: string, down: boolean) => void;
  /** Passive verdicts reached here leave through this, unannounced (workers: to the primary). */
  onPassiveVerdict?: (pool: string, backend: string, untilMs: number, reason: string) => void;
  /**
   * How a membership change reaches every thread (the primary: a reload of
   * its workers and itself). Default: a reload of this thread.
   */
  applyMembership?: (config: Config) => Promise<void>;
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
  const operatorStates = new Map<string, OperatorState>();
  // Each thread reaches a drain's deadline by its own clock: the deadline is absolute, nothing is sent.
  const drains = new DrainTimers((key) => deadlinePassed(key));
  let control: ControlPlane | null = null;
  const learned = (
    pool: string,
    table: string,
    key: number,
    backendId: string,
    exp: number,
    redis: boolean,
  ) => {
    opts.onLearned?.(pool, table, key, backendId, exp);
    if (redis) control?.cluster?.publishLearned(pool, table, key, backendId, exp);
  };
  const shareLearned = Boolean(opts.onLearned || config.redisUrl);
  /** Refusals already logged: a membership change rebuilds every pool, and says only what is new. */
  let refusedBefore = new Set<string>();
  const build = (c: Config, previous?: Runtime) => {
    const r = buildRuntime(c, previous, fallbackKeys);
    /** Backends being removed, keyed "pool\0id": their drain deadlines. */
    const removals = new Map<string, number>();
    const refusedNow = new Set<string>();
    for (const pool of r.pools.values()) {
      for (const { id, reason } of pool.chain.refusedByRing) {
        const k = `${pool.name}\0${id}\0${reason}`;
        refusedNow.add(k);
        if (role !== "worker" && !refusedBefore.has(k))
          log.warn("backend takes no new sessions", {
            pool: pool.name,
            backend: id,
            source: pool.get(id)?.source,
            reason,
          });
      }
      const now = Date.now();
      for (const b of pool.backends) {
        const key = `${pool.name}\0${b.id}`;
        if (b.removing) {
          // A backend being removed drains to its removal's deadline, whatever an operator set before.
          const removal: OperatorState = { state: "drain", until: b.removeUntil };
          b.drainUntil = b.removeUntil;
          b.state = effectiveState(removal, now);
          removals.set(key, b.removeUntil);
          continue;
        }
        const s = operatorStates.get(key);
        b.drainUntil = s?.state === "drain" ? s.until : 0;
        if (s) b.state = effectiveState(s, now);
      }
      for (const [name, table] of pool.chain.tables) {
        const redis = table.clusterShared;
        table.onLearn = shareLearned
          ? (key, backendId, exp) => learned(pool.name, name, key, backendId, exp, redis)
          : null;
      }
    }
    refusedBefore = refusedNow;
    for (const [key, s] of operatorStates)
      if (s.state === "drain" && s.until > 0 && !removals.has(key)) drains.set(key, s.until);
    for (const [key, until] of removals) drains.set(key, until);
    return r;
  };
  let runtime = build(config);
  const current = () => runtime;
  const audit = opts.audit ?? (role === "worker" ? noAudit : createAudit(config.auditFile ?? config.audit));
  const metrics = new Metrics(current);
  const membership =
    role === "worker"
      ? null
      : new Membership(config, {
          log,
          audit,
          current,
          apply: (c) => (opts.applyMembership ? opts.applyMembership(c) : commitHere(c)),
          // A primary learns its workers' load once a second (workers/worker.ts).
          settleMs: role === "primary" ? 1_500 : 0,
          onApiChange: (m, present) => control?.cluster?.publishBackend(m, present),
        });
  const commitHere = async (c: Config) => (await tether.prepare(c)).commit();
  const plane = startControlPlane({
    config,
    role,
    log,
    audit,
    metrics,
    current,
    operatorStates,
    membership,
    restoreBackends(members) {
      if (!membership) return 0;
      const n = membership.restore(members);
      if (n) runtime = build(membership.compose(), runtime);
      return n;
    },
    links: {
      ...opts,
      applyLearned: (pool, table, key, backendId, exp) =>
        tether.applyLearned(pool, table, key, backendId, exp),
      applyState: (pool, backend, state) => tether.applyState(pool, backend, state),
    },
  });
  control = plane;
  if (plane.loadedStates) {
    runtime = build(membership?.compose() ?? config, runtime);
    plane.restarted();
  }
  const { health, admin } = plane;

  /** Redis is asked only about tables it holds: a stick table without "share" is never written there. */
  function redisLookups(cluster: ClusterLookup | null): ClusterLookup | null {
    if (!cluster) return null;
    return {
      lookup: (pool, table, key) =>
        runtime.pools.get(pool)?.chain.tables.get(table)?.clusterShared === false
          ? Promise.resolve(null)
          : cluster.lookup(pool, table, key),
    };
  }

  /**
   * A drain's deadline passed (an operator's, or a removal's): maintenance;
   * its sessions move on their next request, its WebSockets close.
   */
  function deadlinePassed(key: string): void {
    const [poolName = "", id = ""] = key.split("\0");
    const b = runtime.pools.get(poolName)?.get(id);
    const s = b?.removing ? { state: "drain" as const, until: b.removeUntil } : operatorStates.get(key);
    if (!s || !b || effectiveState(s, Date.now()) !== "maint") return;
    const before = b.state;
    b.state = "maint";
    goAway(b);
    // A removal's end is logged and audited as "backend.removed" when it leaves (membership.ts).
    if (role === "worker" || before === "maint" || b.removing) return;
    const fields = { pool: poolName, backend: id, from: before, state: "maint", by: "deadline" };
    log.info("backend state changed", fields);
    audit.emit("backend.state", fields);
  }
  const upstream = new UpstreamClient();
  const lookups = opts.siblings
    ? chainLookups(opts.siblings, redisLookups(plane.lookups))
    : redisLookups(plane.lookups);
  const deps: ProxyDeps = {
    upstream,
    log,
    audit,
    metrics,
    health,
    cluster: lookups,
    ...(opts.flushLearned ? { flushLearned: opts.flushLearned } : {}),
  };

  let data: DataPlane;
  try {
    data = startDataPlane(role === "primary" ? [] : config.listeners, current, deps, log);
  } catch (e) {
    void plane.stop();
    throw e;
  }

  const tether: Tether = {
    get runtime() {
      return runtime;
    },
    get listeners() {
      return data.listeners;
    },
    get admin() {
      return admin ? { port: admin.server.port ?? 0, token: admin.token, generated: admin.generated } : null;
    },
    metrics,
    audit,
    operatorStates,
    membership,
    applyLearned(pool, table, key, backendId, expiresAtSec) {
      const p = runtime.pools.get(pool);
      if (p?.get(backendId))
        p.chain.tables.get(table)?.putHashed(key, backendId, expiresAtSec, Math.floor(Date.now() / 1000));
    },
    applyState(pool, backend, state) {
      const key = `${pool}\0${backend}`;
      operatorStates.set(key, state);
      const b = runtime.pools.get(pool)?.get(backend);
      // A backend being removed keeps its removal's drain and deadline.
      if (b?.removing) return;
      if (b) {
        b.state = effectiveState(state, Date.now());
        b.drainUntil = state.state === "drain" ? state.until : 0;
      }
      drains.set(key, state.state === "drain" ? state.until : 0);
    },
    applyHealth(pool, backend, down) {
      const b = runtime.pools.get(pool)?.get(backend);
      if (b) b.activeDown = down;
    },
    applyPassive(pool, backend, untilMs, reason) {
      const p = runtime.pools.get(pool);
      const b = p?.get(backend);
      if (!p || !b) return false;
      if (role !== "worker") return health.verdict(p, b, untilMs, reason);
      health.adopt(b, untilMs);
      return true;
    },
    async prepare(next: Config): Promise<PreparedReload> {
      const traffic = data.prepare(role === "primary" ? { ...next, listeners: [] } : next);
      let settled = false;
      return {
        commit() {
          if (settled) return;
          settled = true;
          if (next.maxHeaderBytes !== runtime.config.maxHeaderBytes) {
            log.warn("maxHeaderBytes changes need a restart; keeping the current limit", {
              current: runtime.config.maxHeaderBytes,
            });
          }
          const before = runtime;
          runtime = build(next, runtime);
          forgetRemoved(before, runtime, metrics);
          traffic.commit();
          if (role === "single" && traffic.replaces) ensureMigrateReq(log, true);
          plane.restarted();
        },
        abort() {
          if (settled) return;
          settled = true;
          traffic.abort();
        },
      };
    },
    async reload(next: Config) {
      if (membership) await membership.reload(next);
      else await commitHere(next);
    },
    async stop(graceMs = runtime.config.shutdownGraceMs) {
      membership?.stop();
      drains.clearAll();
      await data.stop(graceMs);
      await plane.stop();
      upstream.close();
    },
  };
  return tether;
}
