/**
 * Forwards one HTTP request: the handler, the retry loop and the finishing
 * of the client's response. The pool's placement picks a backend, the
 * upstream client sends the request (a failed connect is retried on the
 * session's next choice and the session re-pinned there), and the backend's
 * answer goes to the client through client-response.ts. Bodies stream both
 * ways.
 *
 * One object per request, a ProxiedRequest, carries the request through every
 * step, as HAProxy's stream does: it is what the listener knows (RequestInfo),
 * what its clock watches (Tracked), the client's cancellation (AbortLike),
 * the upstream request and its options, and the sink the upstream exchange
 * reports to. So the common path allocates no other objects of its own and
 * makes one promise: the Response the listener returns.
 */

import type { ResolvedListener } from "../config/load.ts";
import type { ListenerContext, ProxyDeps, RequestInfo, Runtime, SplitChoice, Tracked } from "../contracts.ts";
import type { Effect, FieldLookup, Placement, RequestFacts } from "../persistence/types.ts";
import { Placing } from "../pool/placement.ts";
import type { Backend, Pool } from "../pool/pool.ts";
import { ClientAbort } from "./client-abort.ts";
import { responseFacts, toClientResponse } from "./client-response.ts";
import { errorResponse, ProxyError } from "./errors.ts";
import {
  appendBackendFields,
  asksToClose,
  clientAddress,
  type FieldRecord,
  type ForwardFacts,
  type ScannedHead,
  scanRequestFields,
} from "./headers.ts";
import { IDEMPOTENT } from "./methods.ts";
import { accessLog, failedResponse, record, unexpected, upstreamFailed } from "./outcomes.ts";
import { auditSplit, clientUsesTls, poolFor, type SplitSlot, withSplitCookie } from "./request-facts.ts";
import type { ExchangeSink } from "./upstream/exchange.ts";
import type { AbortLike, RequestOptions, UpstreamRequest, UpstreamResponse } from "./upstream/types.ts";

/**
 * Under maxConn a slot is held until the response body has been passed on (or
 * failed). Without a limit the slot is released with the response head, which
 * keeps the hot path free of a wrapping stream.
 */
function releaseWhenDone(res: UpstreamResponse, backend: Backend): UpstreamResponse {
  if (!(res.body instanceof ReadableStream) || backend.maxConn === Number.POSITIVE_INFINITY) {
    backend.release();
    return res;
  }
  return releasedAtEnd(res, res.body, backend);
}

/** The slow path, apart so the common one allocates no closure scope. */
function releasedAtEnd(
  res: UpstreamResponse,
  stream: ReadableStream<Uint8Array>,
  backend: Backend,
): UpstreamResponse {
  let released = false;
  const done = () => {
    if (!released) {
      released = true;
      backend.release();
    }
  };
  const reader = stream.getReader();
  const body = new ReadableStream<Uint8Array>({
    async pull(c) {
      try {
        const { done: end, value } = await reader.read();
        if (end) {
          done();
          c.close();
        } else c.enqueue(value);
      } catch (e) {
        done();
        c.error(e);
      }
    },
    cancel(reason) {
      done();
      return reader.cancel(reason);
    },
  });
  return { ...res, body };
}

/**
 * A failed connect never reached the backend: always safe. A reset before the
 * first response byte may have reached it: safe only for an idempotent request
 * without a body (RFC 9110 §9.2.2), since the body stream cannot be replayed.
 */
function retryable(err: ProxyError, request: UpstreamRequest): boolean {
  if (err.safeToRetry) return true;
  return err.code === "RESET_BEFORE_RESPONSE" && request.body === null && IDEMPOTENT.has(request.method);
}

/**
 * What the forwarder reads of the client's request: Bun.serve's Request, or
 * the head tether's own HTTP/1.1 front end parsed (server/h1/).
 */
export interface ClientRequest {
  readonly method: string;
  readonly body: ReadableStream<Uint8Array> | null;
  /**
   * Aborts when the client goes away; read only for a request with a body.
   * Null: the front end calls clientGone itself.
   */
  readonly signal: AbortSignal | null;
  readonly headers: FieldLookup;
}

/** What run() gives the front end: the Response, a promise of it, or nothing when deliver and reply tell it. */
export type Answer = Response | Promise<Response | undefined> | undefined;

export class ProxiedRequest
  extends ClientAbort
  implements
    RequestInfo,
    Tracked,
    ScannedHead,
    ForwardFacts,
    RequestFacts,
    UpstreamRequest,
    RequestOptions,
    ExchangeSink,
    SplitSlot
{
  // RequestInfo (and, inherited from ClientAbort, the client's cancellation)
  readonly listener: ResolvedListener;
  readonly startedAt = performance.now();
  /** Aborts when the client goes away: this object for a bodyless request, else the request's own signal. */
  readonly signal: AbortLike;
  get protocol(): string {
    return this.ctx.protocol;
  }

  // Tracked (the listener's request clock)
  promoted = false;
  suspended = false;
  done = false;
  clockGeneration: (Tracked | null)[] | null = null;
  clockIndex = -1;

  // ScannedHead: what the one pass over the request's fields found
  host: string | null = null;
  cookie: string | null = null;
  connection: string | null = null;
  upgrade: string | null = null;
  contentLength: string | null = null;
  xForwardedFor: string | null = null;
  xForwardedProto: string | null = null;
  xForwardedHost: string | null = null;
  forwarded: string | null = null;

  // ForwardFacts (peerIp is RequestInfo's)
  readonly peerTrusted: boolean;
  readonly proto: string;

  // RequestFacts (cookie is ScannedHead's, target UpstreamRequest's): what the persistence rules read
  readonly headers: FieldLookup;
  clientIp = "";
  nowSec = 0;

  // SplitSlot: a traffic split's choice of pool, when the route has one
  split: SplitChoice | null = null;

  // UpstreamRequest
  readonly method: string;
  readonly target: string;
  private readonly badHost: boolean;
  /** The fields for the backend: the client's, then (once placed) its Cookie and the forwarding fields. */
  readonly fields: string[] = fieldList();
  body: ReadableStream<Uint8Array> | null;
  bodyLength: number | null = null;

  // RequestOptions
  connectTimeoutMs = 0;
  responseTimeoutMs = 0;
  readonly bodyIdleMs: number;

  private readonly deps: ProxyDeps;
  private pool: Pool | null = null;
  private placing: Placing | null = null;
  private placement: Placement | null = null;
  private backend: Backend | null = null;
  private attempt = 0;
  /** Hands the Response to the listener once the backend answered (or every attempt failed). */
  private answer: ((res: Response) => void) | null = null;

  constructor(
    readonly req: ClientRequest,
    /** Origin-form. */
    target: string,
    /** The Host is not a valid authority (Bun.serve then hands over a bare target). */
    badHost: boolean,
    /** Lowercase names, repeated fields merged as Headers.toJSON merges them. */
    fields: FieldRecord,
    protected readonly ctx: ListenerContext,
    readonly runtime: Runtime,
    readonly peerIp: string,
  ) {
    super();
    this.listener = runtime.listeners.get(ctx.config.name) ?? ctx.config;
    this.deps = ctx.deps;
    this.method = req.method;
    this.target = target;
    this.badHost = badHost;
    this.body = req.body;
    this.bodyIdleMs = this.listener.clientIdleMs;
    // A request with a body watches its client from the start: when Bun rejects a malformed
    // body or a pipelined request it closes the connection, and nothing may reach the backend.
    this.signal = this.body === null ? this : (req.signal ?? this);
    this.headers = req.headers;
    scanRequestFields(fields, this, this.fields);
    this.peerTrusted = runtime.trusted.has(peerIp);
    this.proto = this.listener.protocol;
  }

  /**
   * Requests Bun.serve accepts that a reverse proxy must not pass on. Two Host
   * lines (Bun merges them with a comma and builds the URL from the first) and
   * a Host that is not a valid authority (Bun then hands over a bare target
   * instead of a URL) get 400 as RFC 9112 §3.2 asks: the backend could read
   * such a Host differently from the router. CONNECT asks for a tunnel, which
   * tether does not offer (and Bun drops its authority-form target).
   */
  malformed(): Response | null {
    if (this.method === "CONNECT") return errorResponse(501, "CONNECT is not supported.");
    const host = this.host;
    if (host !== null && (host.includes(",") || this.badHost))
      return errorResponse(400, "The request is malformed.");
    return null;
  }

  /** A WebSocket handshake: the listener hands it to proxy/websocket.ts instead of run(). */
  get isWebSocketUpgrade(): boolean {
    return this.upgrade !== null && this.method === "GET" && this.upgrade.toLowerCase() === "websocket";
  }

  /**
   * The Response, or a promise of it once the backend answers; undefined when
   * the front end is handed the answer itself (deliver and reply).
   */
  run(): Answer {
    this.ctx.inflight++;
    this.ctx.tracker.track(this);
    try {
      this.clientIp = clientAddress(this.peerIp, this.xForwardedFor, this.runtime.trusted);
      this.nowSec = Math.floor(Date.now() / 1000);
      const pool = poolFor(this.host, this.target, this, this, this);
      this.pool = pool;
      this.connectTimeoutMs = pool.settings.connectTimeoutMs;
      this.responseTimeoutMs = pool.settings.responseTimeoutMs;
      this.placing = new Placing(pool, this, this.listener.name, this.deps);
      if (this.deps.cluster && pool.chain.tables.size !== 0) return this.afterPrefetch();
      return this.begin();
    } catch (e) {
      return this.failed(e);
    }
  }

  private async afterPrefetch(): Promise<Response | undefined> {
    await (this.placing as Placing).prefetch();
    return this.begin();
  }

  private begin(): Answer {
    try {
      const pool = this.pool as Pool;
      const first = (this.placing as Placing).start();
      if (!first) throw (this.placing as Placing).noPlacement();
      this.placement = first;
      if (this.body !== null) this.bodyLength = declaredLength(this.contentLength);
      const cookie = this.cookie === null ? null : pool.chain.backendCookie(this.cookie);
      appendBackendFields(this.fields, this, this, cookie);
      if (pool.chain.rewritesFields) pool.chain.backendFields(this.fields);
      const pending = this.awaitAnswer();
      this.tryBackend();
      return pending;
    } catch (e) {
      return this.failed(e);
    }
  }

  /** Takes a slot on the placement's backend (waiting for one under maxConn) and sends. */
  private tryBackend(): void {
    const backend = (this.placing as Placing).backendOf(this.placement as Placement);
    this.backend = backend;
    if (backend.tryAcquire()) {
      this.send(backend);
      return;
    }
    void this.queueFor(backend);
  }

  /** A pinned session waits for its backend rather than breaking. */
  private async queueFor(backend: Backend): Promise<void> {
    const slot = await backend.acquire((this.pool as Pool).settings.queueTimeoutMs, this.signal);
    if (slot === "acquired") this.send(backend);
    else if (slot === "timeout") this.reply(this.failed(new ProxyError("NO_BACKEND", "queue timeout")));
    else this.reply(this.failed(new ProxyError("BAD_REQUEST", "client went away")));
  }

  /** Sends on the slot just taken; the outcome comes back through resolve or reject. */
  private send(backend: Backend): void {
    try {
      this.deps.upstream.send(backend.target, this, this, this);
    } catch (e) {
      this.reject(e);
    }
  }

  /** The promise run() returns while the backend is asked; a front end that is told directly returns none. */
  protected awaitAnswer(): Promise<Response> | undefined {
    const { promise, resolve } = Promise.withResolvers<Response>();
    this.answer = resolve;
    return promise;
  }

  /** ExchangeSink: the backend's response head arrived. */
  resolve(res: UpstreamResponse): void {
    try {
      this.finishAnswered(res);
    } catch (e) {
      this.reply(this.failed(e));
    }
  }

  /**
   * ExchangeSink: the attempt failed. Only errors that prove the backend never
   * saw the request (a failed or timed-out connect) are retried, so a
   * non-idempotent request is never sent twice. Anything but a ProxyError is
   * a defect in tether: never retried and never held against the backend.
   */
  reject(reason: unknown): void {
    const backend = this.backend as Backend;
    const pool = this.pool as Pool;
    backend.release();
    // Not a ProxyError: a defect. A stalled upload: the client's doing (its body is partly spent).
    if (!(reason instanceof ProxyError) || reason.code === "CLIENT_TIMEOUT") {
      this.reply(this.failed(reason));
      return;
    }
    // The client went away (the exchange rejects with the abort reason): not the backend's fault.
    if (this.signal.aborted) {
      this.reply(this.failed(new ProxyError("BAD_REQUEST", "client went away")));
      return;
    }
    upstreamFailed(this.deps, pool, backend, reason, this.attempt);
    const next =
      retryable(reason, this) && this.attempt < pool.settings.retries
        ? (this.placing as Placing).next(this.placement as Placement)
        : null;
    if (next === null) {
      const placing = this.placing as Placing;
      this.reply(this.failed(placing.isHeld ? placing.noPlacement() : reason));
      return;
    }
    this.attempt++;
    this.placement = next;
    this.retrySoon();
  }

  /** Not from inside the failed connection's own callback. */
  private retrySoon(): void {
    queueMicrotask(() => this.tryBackend());
  }

  private finishAnswered(res: UpstreamResponse): void {
    const pool = this.pool as Pool;
    const backend = this.backend as Backend;
    const placement = this.placement as Placement;
    const deps = this.deps;
    deps.health.answered(pool, backend, res.status);
    const response = releaseWhenDone(res, backend);
    (this.placing as Placing).settle(placement);
    record(deps, this, pool, backend, res.status);
    const secure = clientUsesTls(this, this);
    let effects = pool.chain.remember(this, placement, responseFacts(res, secure));
    // What the rules learned leaves for the other threads before the answer leaves for the client.
    deps.flushLearned?.();
    if (this.split !== null) effects = this.splitEffects(effects, secure, backend);
    accessLog(deps, this, this.req, this.target, pool.name, backend.id, res.status);
    this.deliver(response, effects);
  }

  /** Hands the backend's answer, with the persistence rules' effects, to the client. */
  protected deliver(res: UpstreamResponse, effects: readonly Effect[]): void {
    this.reply(
      toClientResponse(
        res,
        this.method,
        effects,
        this,
        this.listener.clientIdleMs,
        this.ctx.hsts,
        asksToClose(this.connection),
      ),
    );
  }

  /** A traffic split's cookie, and its audit line when it gave a new session a pool (apart: the slow path). */
  private splitEffects(effects: Effect[], secure: boolean, backend: Backend) {
    const split = this.split as SplitChoice;
    auditSplit(this.deps.audit, split, this.listener.name, this.clientIp, backend.id);
    return withSplitCookie(effects, split, secure);
  }

  /** The answer for a request that could not be forwarded (the request is finished with it). */
  protected failed(e: unknown): Response {
    const err = e instanceof ProxyError ? e : unexpected(e, this.deps, this);
    accessLog(this.deps, this, this.req, this.target, this.pool?.name ?? "", "", err.status, err.code);
    this.responded();
    const res = failedResponse(err, this.deps, this, this.pool);
    if (this.ctx.hsts !== null) res.headers.set("strict-transport-security", this.ctx.hsts);
    if (asksToClose(this.connection)) res.headers.set("connection", "close");
    return res;
  }

  /** Hands a finished Response (an error, or the backend's answer built by deliver) to the client. */
  protected reply(res: Response): void {
    const answer = this.answer;
    this.answer = null;
    answer?.(res);
  }

  /** The response (its whole body, for a stream) has been handed to the client, or the request failed. */
  responded(): void {
    if (this.done) return;
    this.ctx.inflight--;
    this.ctx.tracker.finished(this);
  }

  /** Tracked: the client went away while the request ran. */
  clientGone(reason: unknown): void {
    this.abort(reason);
  }
}

/**
 * An empty list with room for a usual request's fields and tether's own (about
 * 12 fields, flat): grown from nothing, it would be copied three or four times.
 */
function fieldList(): string[] {
  const list: string[] = new Array(32);
  list.length = 0;
  return list;
}

/** A Content-Length the client declared for its body, or null (a chunked body). */
function declaredLength(cl: string | null): number | null {
  return cl !== null && /^\d+$/.test(cl) ? Number(cl) : null;
}
