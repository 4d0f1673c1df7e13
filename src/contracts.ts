/**
 * Shapes shared across layers, as interfaces only. The request path (pool,
 * proxy, passthrough) names here what it needs of the running proxy, and the
 * upper layers (server, admin, workers) build the real objects and pass them
 * in, so no lower folder imports an upper one. See docs/design.md, "Layers".
 */
import type { Audit } from "./audit.ts";
import type { Config, ResolvedListener } from "./config/load.ts";
import type { Logger } from "./log.ts";
import type { RequestFacts } from "./persistence/types.ts";
import type { Backend, Pool } from "./pool/pool.ts";
import type { TrustedProxies } from "./proxy/trusted-proxies.ts";
import type { UpstreamClient } from "./proxy/upstream/client.ts";
import type { AbortLike } from "./proxy/upstream/types.ts";

/** Host and path → pool name, or the route's traffic split, for one listener. */
export interface Router {
  pick(host: string | null, path: string): string | TrafficSplitter;
}

/** A route's sticky traffic split (server/split.ts): which pool a request's session belongs to. */
export interface TrafficSplitter {
  choose(facts: RequestFacts): SplitChoice;
}

export interface SplitChoice {
  pool: string;
  /**
   * How: "cookie" (the split's own cookie), "session" (a session the pool's
   * rules name), "key" (a weighted hash of the session key), "weight" (a new
   * session, drawn by weight).
   */
  by: "cookie" | "session" | "key" | "weight";
  /** A Set-Cookie value naming the pool, without Secure, when one is due; else null. */
  cookie: string | null;
}

/**
 * Everything a request needs that changes on reload, built from one Config.
 * A reload builds a new Runtime and swaps it in; requests in flight keep the
 * one they started with.
 */
export interface Runtime {
  readonly config: Config;
  readonly pools: ReadonlyMap<string, Pool>;
  readonly routers: ReadonlyMap<string, Router>;
  readonly listeners: ReadonlyMap<string, ResolvedListener>;
  readonly trusted: TrustedProxies;
}

/** What the listener knows about a request before any backend is chosen. */
export interface RequestInfo {
  listener: ResolvedListener;
  runtime: Runtime;
  peerIp: string;
  startedAt: number;
  /** The HTTP versions the request may have come over (ListenerContext.protocol); absent for WebSocket upgrades. */
  protocol?: string;
  /** Called once the response (its whole body, for a stream) has been handed to the client. */
  responded?: () => void;
  /** Aborts when the client goes away (default: the request's own signal). */
  signal?: AbortLike;
}

/**
 * A request the listener's clock watches (server/request-clock.ts): one that
 * runs long gets its client's idle timer suspended and its client watched.
 */
export interface Tracked {
  /** A Bun.serve Request (the clock's server.timeout and signal need one). */
  readonly req: { readonly signal: AbortSignal | null };
  /** Client signal attached (and idle timer suspended). */
  promoted: boolean;
  /** Idle timer suspended: restored when the request finishes. */
  suspended: boolean;
  /** Finished or detached: a sweep drops it. */
  done: boolean;
  /**
   * Where the clock holds it until a sweep (its generation and index), so
   * finishing can let go of it at once: a finished request must not be kept
   * alive, or its garbage outlives the young generation.
   */
  clockGeneration: (Tracked | null)[] | null;
  clockIndex: number;
  /** The client went away while the request ran. */
  clientGone(reason: unknown): void;
}

export interface RequestTracker {
  track(t: Tracked): void;
  /** The response was handed over (or the request failed): restores the idle timer if it was suspended. */
  finished(t: Tracked): void;
}

/** One traffic listener's constant part, shared by its requests. */
export interface ListenerContext {
  /** The listener as configured when it opened (the Runtime may hold a newer one). */
  readonly config: ResolvedListener;
  readonly deps: ProxyDeps;
  readonly tracker: RequestTracker;
  /** The Strict-Transport-Security value for an https listener, else null. */
  readonly hsts: string | null;
  /**
   * The HTTP versions this server may have served a request over ("h3", or the
   * TCP side's list such as "http/1.1+h2"): Bun does not say per request.
   */
  readonly protocol: string;
  /** Requests whose response has not been handed to Bun yet. */
  inflight: number;
}

/** Learned sessions held by other tether instances (Redis): consulted on a local miss. */
export interface ClusterLookup {
  lookup(
    pool: string,
    table: string,
    key: number,
  ): Promise<{ backendId: string; expiresAtSec: number } | null>;
}

export type DecisionOutcome = "hit" | "miss" | "rejected" | "repinned";

/** One listener, pool and backend's request series, resolved once. */
export interface RequestCounter {
  count(code: number, seconds: number): void;
}

/** One pool and rule's decision series, resolved once. */
export interface DecisionCounter {
  count(outcome: DecisionOutcome): void;
}

/** The counters the request path increments; admin/metrics.ts implements them. */
export interface ProxyMetrics {
  requestSeries(listener: string, pool: string, backend: string): RequestCounter;
  decisionSeries(pool: string, rule: string): DecisionCounter;
  request(listener: string, pool: string, backend: string, code: number, seconds: number): void;
  connectError(pool: string, backend: string): void;
  decision(pool: string, rule: string, outcome: DecisionOutcome): void;
  rejected(reason: string): void;
}

/** Passive health: what real traffic tells about a backend; pool/health.ts implements it. */
export interface HealthSink {
  /** The backend answered with `status` (a 5xx counts as a failure with failOn5xx). */
  answered(pool: Pool, b: Backend, status: number): void;
  /** The backend was reached (a TLS passthrough connect): its run of failures ends. */
  succeeded(b: Backend): void;
  /** A connect error or timeout, or a response timeout. */
  failed(pool: Pool, b: Backend, reason: string): void;
}

/** What the forwarders need from the control plane. */
export interface ProxyDeps {
  upstream: UpstreamClient;
  log: Logger;
  audit: Audit;
  metrics: ProxyMetrics;
  health: HealthSink;
  cluster?: ClusterLookup | null;
  /**
   * Sends the entries learned so far to the other threads now (workers), so
   * a client's next request finds its session on whichever thread takes it.
   */
  flushLearned?: () => void;
}

/** What the app needs of a listening socket: a Bun.serve server, or a tls-passthrough listener. */
export interface ListenerServer {
  readonly port: number | undefined;
  readonly hostname: string | undefined;
  readonly pendingRequests: number;
  readonly pendingWebSockets: number;
  /** Stops accepting; with closeActiveConnections, also closes every open connection. */
  stop(closeActiveConnections?: boolean): void | Promise<void>;
}

export interface ListenerHandle {
  readonly config: ResolvedListener;
  readonly server: ListenerServer;
  /** Requests whose response has not been handed to Bun yet (tls-passthrough: open connections). */
  inflight(): number;
}
