/**
 * The upstream HTTP/1.1 client: Bun.connect sockets in a keep-alive pool per
 * target. Built on raw sockets rather than fetch() for a connect timeout,
 * failures told apart (refused, timed out, reset before the response) and no
 * detour through fetch's single HTTP-client thread.
 */

import { IDEMPOTENT } from "../methods.ts";
import { Conn, type ConnOwner } from "./connection.ts";
import { Exchange, type ExchangeSink } from "./exchange.ts";
import { IdlePool } from "./pool.ts";
import { requestHeadLength } from "./serialize.ts";
import type { RequestOptions, UpstreamRequest, UpstreamResponse, UpstreamTarget } from "./types.ts";

export interface UpstreamClientOptions {
  /** Idle keep-alive sockets kept per target (default 64); more are closed when released. */
  maxIdlePerTarget?: number;
  /** Idle pooled sockets are closed after this long (default 30 000 ms). */
  idleTimeoutMs?: number;
  /** A larger response head (or trailer section) is a BAD_RESPONSE (default 64 KiB). */
  maxHeaderBytes?: number;
}

/** How recently a pooled socket must have been used for a non-idempotent request to reuse it. */
const FRESH_IDLE_MS = 2_000;

export class UpstreamClient implements ConnOwner {
  readonly maxHeaderBytes: number;
  private readonly pool: IdlePool<Conn>;
  private closed = false;

  constructor(opts: UpstreamClientOptions = {}) {
    this.maxHeaderBytes = opts.maxHeaderBytes ?? 64 * 1024;
    this.pool = new IdlePool(opts.maxIdlePerTarget ?? 64, opts.idleTimeoutMs ?? 30_000);
  }

  /**
   * Sends req to target. Resolves with the response head once it arrived
   * (the body may still be streaming); rejects with a ProxyError, or with
   * the signal's reason when opts.signal aborts.
   */
  request(target: UpstreamTarget, req: UpstreamRequest, opts: RequestOptions): Promise<UpstreamResponse> {
    const deferred = Promise.withResolvers<UpstreamResponse>();
    this.send(target, req, opts, deferred);
    return deferred.promise;
  }

  /**
   * As request(), with the outcome handed to `sink` instead of a promise:
   * sink.resolve with the response head, or sink.reject with a ProxyError
   * (or the signal's reason when opts.signal aborts).
   */
  send(target: UpstreamTarget, req: UpstreamRequest, opts: RequestOptions, sink: ExchangeSink): void {
    const signal = opts.signal;
    if (signal?.aborted) {
      sink.reject(signal.reason);
      return;
    }
    let headLength: number;
    try {
      headLength = requestHeadLength(req);
    } catch (err) {
      sink.reject(err);
      return;
    }
    const ex = new Exchange(target, req, opts, headLength, sink);
    signal?.addEventListener("abort", ex);
    // A non-idempotent request cannot be retried if a pooled socket turns out
    // to be closed, so it only reuses one that was busy moments ago.
    const pooled = this.takeIdle(
      target.key,
      IDEMPOTENT.has(req.method) ? Number.POSITIVE_INFINITY : FRESH_IDLE_MS,
    );
    if (pooled !== undefined) pooled.attach(ex, true);
    else this.connect(ex);
  }

  /** Idle pooled sockets across all targets. */
  get idleCount(): number {
    return this.pool.idleCount;
  }

  /** Closes all idle sockets; sockets of exchanges still running close when they finish. */
  close(): void {
    this.closed = true;
    this.pool.closeAll();
  }

  release(conn: Conn): void {
    if (this.closed || !this.pool.put(conn)) conn.close();
  }

  forget(conn: Conn): void {
    this.pool.remove(conn);
  }

  retry(ex: Exchange): void {
    ex.retried = true;
    this.connect(ex);
  }

  private takeIdle(key: string, maxIdleMs: number): Conn | undefined {
    for (;;) {
      const conn = this.pool.take(key);
      if (conn === undefined) return undefined;
      if (!conn.usable) {
        conn.destroy();
        continue;
      }
      if (performance.now() - conn.idleSince <= maxIdleMs) return conn;
      // Too long idle for this request: keep it (as idle as it was) for an idempotent one.
      if (!this.pool.restore(conn)) conn.close();
      return undefined;
    }
  }

  private connect(ex: Exchange): void {
    const conn = new Conn(this, ex.target.key);
    conn.attach(ex, false);
    conn.connect(ex.target, ex.opts.connectTimeoutMs);
  }
}
