/**
 * Per-request work that only long requests need, done lazily by one sweep.
 *
 * Two things a request may need while it waits on its backend: Bun's idle
 * timer must not close the client connection (server.timeout(req, 0)), and
 * a client that hangs up should cancel the backend exchange (req.signal).
 * Both are native calls that cost several µs each, a large share of a
 * proxied request, and almost every request is answered long before either
 * matters. So a request gets a Ticket, and a sweep every SWEEP_MS promotes
 * the tickets it has already seen once (250-500 ms old): only then are the
 * idle timer suspended and req.signal consulted. Bun reports a signal
 * accessed after the client left as already aborted, so nothing is missed.
 *
 * Bun's idle timers tick every 4 s and a timeout of N seconds fires on the
 * ceil(N/4)-th tick, so it can fire up to 4 s early: as soon as the next
 * tick for N <= 4. Such short idle timeouts are suspended at once instead.
 */
import type { Server } from "bun";
import type { AbortLike } from "../proxy/upstream/types.ts";

const SWEEP_MS = 250;
/** Idle timeouts up to this many seconds can fire before a sweep reaches the request. */
const EAGER_IDLE_SECONDS = 4;

type AbortListener = ((this: unknown) => void) | { handleEvent(): void };

/** An AbortSignal-shaped cancellation that costs one small object per request. */
export class ClientAbort implements AbortLike {
  aborted = false;
  reason: unknown = undefined;
  private listeners: AbortListener[] | null = null;

  addEventListener(_type: "abort", listener: AbortListener): void {
    if (this.listeners === null) this.listeners = [listener];
    else this.listeners.push(listener);
  }

  removeEventListener(_type: "abort", listener: AbortListener): void {
    const i = this.listeners?.indexOf(listener) ?? -1;
    if (i !== -1) this.listeners?.splice(i, 1);
  }

  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    const listeners = this.listeners;
    this.listeners = null;
    for (const l of listeners ?? []) {
      if (typeof l === "function") l.call(this);
      else l.handleEvent();
    }
  }
}

export class Ticket {
  readonly abort = new ClientAbort();
  /** Seen by one sweep: the next one promotes it. */
  seen = false;
  /** Client signal attached (and idle timer suspended). */
  promoted = false;
  /** Idle timer suspended: restored when the request finishes. */
  suspended = false;
  done = false;

  constructor(
    readonly req: Request,
    private readonly clock: RequestClock,
  ) {}

  /** The response (its whole body, for a stream) was handed over, or the request failed. */
  finish(): void {
    if (this.done) return;
    this.done = true;
    this.clock.finished(this);
  }

  /** The connection is no longer an HTTP exchange (a WebSocket upgrade): nothing to restore. */
  detach(): void {
    this.done = true;
    this.clock.detached(this);
  }
}

export class RequestClock {
  private readonly open = new Set<Ticket>();
  private timer: ReturnType<typeof setInterval> | null = null;
  private readonly eager: boolean;

  /** idleSeconds: the listener's idle timeout, restored after a promoted request. */
  constructor(
    private readonly server: () => Server<unknown> | undefined,
    private readonly idleSeconds: number,
  ) {
    this.eager = idleSeconds > 0 && idleSeconds <= EAGER_IDLE_SECONDS;
  }

  start(req: Request): Ticket {
    const t = new Ticket(req, this);
    if (this.eager) this.suspend(t);
    this.open.add(t);
    if (this.timer === null) {
      this.timer = setInterval(() => this.sweep(), SWEEP_MS);
      this.timer.unref();
    }
    return t;
  }

  finished(t: Ticket): void {
    if (!t.promoted) this.open.delete(t);
    if (!t.suspended) return;
    // Bun keeps a request's timeout for the rest of its connection: restore it for the next request.
    try {
      this.server()?.timeout(t.req, this.idleSeconds);
    } catch {
      // The connection is already gone.
    }
  }

  detached(t: Ticket): void {
    this.open.delete(t);
  }

  /** Requests that have not finished yet. */
  get size(): number {
    return this.open.size;
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  private suspend(t: Ticket, srv = this.server()): void {
    t.suspended = true;
    try {
      srv?.timeout(t.req, 0);
    } catch {
      // The connection is already gone: its signal is aborted.
    }
  }

  private sweep(): void {
    if (this.open.size === 0) {
      this.stop();
      return;
    }
    const srv = this.server();
    for (const t of this.open) {
      if (!t.seen) {
        t.seen = true;
        continue;
      }
      this.open.delete(t);
      t.promoted = true;
      if (!t.suspended) this.suspend(t, srv);
      const signal = t.req.signal;
      if (signal.aborted) t.abort.abort(signal.reason);
      else signal.addEventListener("abort", () => t.abort.abort(signal.reason), { once: true });
    }
  }
}
