/**
 * A pool of backends and its persistence chain, which chooses among them.
 */
import type { ResolvedBackend, ResolvedPool } from "../config/load.ts";
import type { BackendState } from "../config/schema.ts";
import { PersistenceChain } from "../persistence/chain.ts";
import type { UpstreamTarget } from "../proxy/upstream/types.ts";
import { ActiveSessions } from "./active-sessions.ts";

/** One backend's live state. The object outlives reloads while its id and address stay the same. */
export class Backend {
  /** Requests currently being proxied to it. */
  inflight = 0;
  /** Callbacks waiting for a free slot under maxConn. */
  readonly waiters: (() => void)[] = [];
  /** Active health checks say it is down. */
  activeDown = false;
  /** Passive checks: down until this time (ms since the epoch). */
  passiveDownUntil = 0;
  /** Passive checks: consecutive failures so far. */
  consecutiveFails = 0;
  /** Counters for the admin API. */
  requests = 0;
  errors = 0;
  /** When a request last arrived pinned to it (ms since the epoch; 0 = never). */
  lastPinnedAt = 0;
  sessions: ActiveSessions;

  constructor(
    readonly id: string,
    public weight: number,
    public state: BackendState,
    readonly target: UpstreamTarget,
    /** Most requests in flight at once (Infinity: no limit). */
    public maxConn: number,
    activeWindowMs: number,
  ) {
    this.sessions = new ActiveSessions(activeWindowMs);
  }

  /** Known unreachable, by active or passive checks. */
  get down(): boolean {
    return this.activeDown || (this.passiveDownUntil !== 0 && this.passiveDownUntil > Date.now());
  }
}

export interface PoolSettings {
  connectTimeoutMs: number;
  responseTimeoutMs: number;
  retries: number;
  queueTimeoutMs: number;
  maxFails: number;
  failTimeoutMs: number;
  failOn5xx: boolean;
  /** tcp:// backends (a tls-passthrough pool): health checks connect instead of asking over HTTP. */
  tcp: boolean;
  /** tls-passthrough pools: the PROXY protocol version sent to backends, if any. */
  sendProxyProtocol?: "v1" | "v2";
}

export function toTarget(b: ResolvedBackend): UpstreamTarget {
  const target: UpstreamTarget = { key: b.origin, hostname: b.hostname, port: b.port };
  if (b.secure) {
    target.tls = { verify: b.tls?.verify ?? true };
    if (b.caPem) target.tls.ca = b.caPem;
    if (b.tls?.serverName) target.tls.serverName = b.tls.serverName;
  }
  return target;
}

export class Pool {
  readonly backends: Backend[];
  readonly settings: PoolSettings;
  readonly chain: PersistenceChain;
  readonly healthCheck: ResolvedPool["healthCheck"];
  private readonly byId = new Map<string, Backend>();

  constructor(
    readonly name: string,
    config: ResolvedPool,
    /** Cookie keys; the first seals. */
    cookieKeys: readonly Buffer[],
    activeWindowMs: number,
    /** The previous generation: its backend objects are reused by id and address. */
    previous?: Pool,
  ) {
    this.settings = {
      connectTimeoutMs: config.connectTimeoutMs,
      responseTimeoutMs: config.responseTimeoutMs,
      retries: config.retries,
      queueTimeoutMs: config.queueTimeoutMs,
      maxFails: config.maxFails,
      failTimeoutMs: config.failTimeoutMs,
      failOn5xx: config.failOn5xx,
      tcp: config.backends.some((b) => b.tcp),
      ...(config.sendProxyProtocol ? { sendProxyProtocol: config.sendProxyProtocol } : {}),
    };
    this.healthCheck = config.healthCheck;
    this.backends = config.backends.map((b) => {
      const target = toTarget(b);
      const sameServer = (o: Backend) => o.id === b.id && JSON.stringify(o.target) === JSON.stringify(target);
      const old = previous?.backends.find(sameServer);
      if (old) {
        // Same server: keep the live object so in-flight counts stay right across a reload.
        old.weight = b.weight;
        old.state = b.state;
        old.maxConn = b.maxConn ?? Number.POSITIVE_INFINITY;
        if (old.sessions.windowMs !== activeWindowMs) old.sessions = new ActiveSessions(activeWindowMs);
        return old;
      }
      const maxConn = b.maxConn ?? Number.POSITIVE_INFINITY;
      return new Backend(b.id, b.weight, b.state, target, maxConn, activeWindowMs);
    });
    this.chain = new PersistenceChain(this.backends, {
      pool: name,
      rules: config.persistence,
      keys: cookieKeys,
      hashBalanceFactor: config.hashBalanceFactor,
      ...(previous ? { previousTables: previous.chain.tables } : {}),
    });
    for (const b of this.backends) this.byId.set(b.id, b);
  }

  get(id: string): Backend | undefined {
    return this.byId.get(id);
  }
}
