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
import type { RequestTracker, Tracked } from "../contracts.ts";

const SWEEP_MS = 250;
/** Idle timeouts up to this many seconds can fire before a sweep reaches the request. */
const EAGER_IDLE_SECONDS = 4;

/**
 * The requests a listener has running, in two generations: those that
 * arrived since the last sweep, and those before. A request is pushed once
 * and marked done when it finishes; it is never searched for or removed one
 * by one. A sweep promotes the older generation's requests that are still
 * running (250-500 ms old) and starts a new generation.
 */
export class RequestClock implements RequestTracker {
  private current: (Tracked | null)[] = [];
  private previous: (Tracked | null)[] = [];
  private timer: ReturnType<typeof setInterval> | null = null;
  private readonly eager: boolean;

  /** idleSeconds: the listener's idle timeout, restored after a promoted request. */
  constructor(
    private readonly server: () => Server<unknown> | undefined,
    private readonly idleSeconds: number,
  ) {
    this.eager = idleSeconds > 0 && idleSeconds <= EAGER_IDLE_SECONDS;
  }

  track(t: Tracked): void {
    if (this.eager) this.suspend(t);
    t.clockGeneration = this.current;
    t.clockIndex = this.current.length;
    this.current.push(t);
    if (this.timer === null) this.startSweeping();
  }

  private startSweeping(): void {
    this.timer = setInterval(() => this.sweep(), SWEEP_MS);
    this.timer.unref();
  }

  finished(t: Tracked): void {
    if (t.done) return;
    t.done = true;
    this.release(t);
    if (!t.suspended) return;
    // Bun keeps a request's timeout for the rest of its connection: restore it for the next request.
    try {
      this.server()?.timeout(t.req as Request, this.idleSeconds);
    } catch {
      // The connection is already gone.
    }
  }

  /** The connection is no longer an HTTP exchange (a WebSocket upgrade): nothing to restore. */
  detached(t: Tracked): void {
    t.done = true;
    this.release(t);
  }

  /** Lets go of a finished request before the sweep comes. */
  private release(t: Tracked): void {
    const generation = t.clockGeneration;
    if (generation !== null && generation[t.clockIndex] === t) generation[t.clockIndex] = null;
    t.clockGeneration = null;
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  private suspend(t: Tracked, srv = this.server()): void {
    t.suspended = true;
    try {
      srv?.timeout(t.req as Request, 0);
    } catch {
      // The connection is already gone: its signal is aborted.
    }
  }

  private sweep(): void {
    const older = this.previous;
    this.previous = this.current;
    this.current = older;
    if (older.length === 0 && this.previous.length === 0) {
      this.stop();
      return;
    }
    const srv = this.server();
    for (const t of older) {
      if (t === null || t.done) continue;
      t.clockGeneration = null;
      t.promoted = true;
      if (!t.suspended) this.suspend(t, srv);
      const signal = (t.req as Request).signal;
      if (signal.aborted) t.clientGone(signal.reason);
      else signal.addEventListener("abort", () => t.clientGone(signal.reason), { once: true });
    }
    older.length = 0;
  }
}
