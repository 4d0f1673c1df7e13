/**
 * A pool of backends and its persistence chain, which chooses among them.
 */
import type { ResolvedBackend, ResolvedPool } from "../config/load.ts";
import { type BackendSource, type BackendState, isTcpPool } from "../config/schema.ts";
import type { DecisionCounter, RequestCounter } from "../contracts.ts";
import { PersistenceChain } from "../persistence/chain.ts";
import type { AbortLike, UpstreamTarget } from "../proxy/upstream/types.ts";
import { ActiveSessions } from "./active-sessions.ts";

/** What a backend needs of an open WebSocket to end it (its drain deadline passed). */
export interface ClosableSocket {
  /** Closes both sides with 1001 (going away). */
  goAway(): void;
}

/** How a wait for a slot ended. */
export type SlotWait = "acquired" | "timeout" | "aborted";

/** One backend's live state. The object outlives reloads while its id and address stay the same. */
export class Backend {
  /** Requests currently being proxied to it (each holds a slot under maxConn). */
  inflight = 0;
  /** WebSockets open to it, counted apart from requests: they last for hours and have their own limit. */
  websockets = 0;
  /** Requests waiting for a slot under maxConn, first come first served. */
  private readonly waiters: ((slot: SlotWait) => void)[] = [];
  /** Active health checks say it is down. */
  activeDown = false;
  /** Passive checks: down until this time (ms since the epoch). */
  passiveDownUntil = 0;
  /** Passive checks: consecutive failures so far. */
  consecutiveFails = 0;
  /** Counters for the admin API. */
  requests = 0;
  errors = 0;
  /** A drain's deadline (ms since the epoch), after which it is in maintenance; 0 = none. */
  drainUntil = 0;
  /** Its open WebSockets, closed when a drain deadline passes (added per WebSocket, never per request). */
  readonly sockets = new Set<ClosableSocket>();
  /** When a request last arrived pinned to it (ms since the epoch; 0 = never). */
  lastPinnedAt = 0;
  sessions: ActiveSessions;
  /** Its request metrics, resolved once per listener that reaches it. */
  readonly requestSeries = new Map<string, RequestCounter>();
  /** Where it came from: the config file, DNS discovery or the admin API. */
  source: BackendSource = "config";
  /** A dynamic backend being removed: it drains until it leaves the pool. */
  removing = false;
  /** Being removed: its drain deadline (ms since the epoch), after which it is in maintenance; 0 = none. */
  removeUntil = 0;
  /** The URL it was given. */
  url = "";

  constructor(
    readonly id: string,
    public weight: number,
    public state: BackendState,
    readonly target: UpstreamTarget,
    /** Most requests in flight at once (Infinity: no limit). */
    public maxConn: number,
    activeWindowMs: number,
    /** Most WebSockets open at once (Infinity: no limit). */
    public maxWebSockets = Number.POSITIVE_INFINITY,
  ) {
    this.sessions = new ActiveSessions(activeWindowMs);
  }

  /** Known unreachable, by active or passive checks. */
  get down(): boolean {
    return this.activeDown || (this.passiveDownUntil !== 0 && this.passiveDownUntil > Date.now());
  }

  /** What bounded loads weigh: requests in flight and open WebSockets. */
  get load(): number {
    return this.inflight + this.websockets;
  }

  /** Takes a slot under maxConn if one is free now and nobody queues for it; false otherwise. */
  tryAcquire(): boolean {
    if (this.inflight >= this.maxConn || this.waiters.length > 0) return false;
    this.inflight++;
    return true;
  }

  /**
   * Waits in the queue for a slot. A released slot is handed to the first
   * waiter directly (inflight never drops in between), so no request that
   * arrives meanwhile can take it and exceed maxConn.
   */
  acquire(timeoutMs: number, signal: AbortLike): Promise<SlotWait> {
    if (this.tryAcquire()) return Promise.resolve("acquired");
    return new Promise<SlotWait>((resolve) => {
      const settle = (slot: SlotWait) => {
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
        resolve(slot);
      };
      const leave = (why: SlotWait) => {
        const i = this.waiters.indexOf(settle);
        if (i !== -1) this.waiters.splice(i, 1);
        settle(why);
      };
      const onAbort = () => leave("aborted");
      const timer = setTimeout(leave, timeoutMs, "timeout");
      signal.addEventListener("abort", onAbort);
      this.waiters.push(settle);
    });
  }

  /** Gives a slot back: to the first waiter if any, else to the pool of free slots. */
  release(): void {
    const next = this.waiters.shift();
    if (next) next("acquired");
    else this.inflight--;
  }

  /** Requests waiting for a slot. */
  get queued(): number {
    return this.waiters.length;
  }

  /** Counts a WebSocket under maxWebSockets; false when the backend has no room for one. */
  openWebSocket(): boolean {
    if (this.websockets >= this.maxWebSockets) return false;
    this.websockets++;
    return true;
  }

  closeWebSocket(): void {
    this.websockets--;
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
  /** failover "strict": what Retry-After says to a session held while its backend is down (seconds). */
  retryAfterSec: number;
  /** tls-passthrough pools: the PROXY protocol version sent to backends, if any. */
  sendProxyProtocol?: "v1" | "v2";
  /**
   * A drain set through the admin API without a deadline gets this one (ms
   * from then); 0 = none. A backend being removed drains this long at most
   * (removal.ts has the default).
   */
  drainDeadlineMs: number;
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
  /** Decision metrics, resolved once per rule. */
  readonly decisionSeries = new Map<string, DecisionCounter>();
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
      tcp: isTcpPool(config),
      drainDeadlineMs: config.drainDeadlineMs ?? 0,
      // About when a down backend can be seen up again: active checks need `rise` passes, passive ones expire.
      retryAfterSec: Math.max(
        1,
        Math.ceil(
          (config.healthCheck
            ? config.healthCheck.intervalMs * config.healthCheck.rise
            : config.failTimeoutMs) / 1000,
        ),
      ),
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
        old.maxWebSockets = b.maxWebSockets ?? Number.POSITIVE_INFINITY;
        old.source = b.source ?? "config";
        old.removing = b.removing === true;
        old.removeUntil = b.removeUntil ?? 0;
        if (old.sessions.windowMs !== activeWindowMs) old.sessions = new ActiveSessions(activeWindowMs);
        return old;
      }
      const maxConn = b.maxConn ?? Number.POSITIVE_INFINITY;
      const maxWs = b.maxWebSockets ?? Number.POSITIVE_INFINITY;
      const fresh = new Backend(b.id, b.weight, b.state, target, maxConn, activeWindowMs, maxWs);
      fresh.source = b.source ?? "config";
      fresh.removing = b.removing === true;
      fresh.removeUntil = b.removeUntil ?? 0;
      fresh.url = b.url;
      // A backend that joins a running pool with active checks takes no new sessions before its
      // first checks pass (the listed ones start up, as they always have). Every thread builds it
      // the same way; the primary's checks announce it up.
      if (b.source && config.healthCheck) fresh.activeDown = true;
      return fresh;
    });
    this.chain = new PersistenceChain(this.backends, {
      pool: name,
      rules: config.persistence,
      keys: cookieKeys,
      hashBalanceFactor: config.hashBalanceFactor,
      failover: config.failover,
      ...(previous
        ? { previousTables: previous.chain.tables, previousMemberships: previous.chain.rebalancer.history }
        : {}),
    });
    for (const b of this.backends) this.byId.set(b.id, b);
  }

  get(id: string): Backend | undefined {
    return this.byId.get(id);
  }
}
