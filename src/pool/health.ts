/**
 * Backend health: active checks on a timer per pool, passive marks from real
 * traffic. Every change is logged and audited (event "backend.state") once,
 * whatever the number of threads.
 *
 * Active: a probe every intervalMs (GET healthCheck.path, or a TCP connect for
 * the tcp:// backends of tls-passthrough pools); `fall` consecutive failures
 * mark a backend down, `rise` consecutive successes mark it up again. Active
 * checks run in one thread (the primary, or the only thread), which passes
 * each change on.
 *
 * Passive: `maxFails` consecutive connect errors or timeouts (and 5xx answers
 * with failOn5xx) mark it down until failTimeoutMs from then. Failures are
 * counted per thread, on the traffic that thread serves; the thread whose
 * count reaches maxFails reaches the verdict. A worker thread applies it at
 * once and reports it; the primary applies and announces it and relays it to
 * the other workers, which apply it silently. The verdict names its end time,
 * so every thread counts the backend up again at the same moment; the
 * primary's sweep announces the return.
 */
import type { Audit } from "../audit.ts";
import type { Logger } from "../log.ts";
import type { UpstreamTarget } from "../proxy/upstream/types.ts";
import type { Backend, Pool } from "./pool.ts";

const SWEEP_MS = 500;

export type HealthCheck = NonNullable<Pool["healthCheck"]>;

export interface ProbeResult {
  ok: boolean;
  /** What was seen: "status 200", "refused", "timeout"... */
  reason: string;
}

/** How a backend is probed; the server layer builds these from its clients. */
export interface HealthProbes {
  /** An HTTP request for hc.path; ok when the status is a healthy one. */
  http(target: UpstreamTarget, hc: HealthCheck): Promise<ProbeResult>;
  /** A TCP connect (a PROXY protocol LOCAL header first, when the pool sends the protocol). */
  tcp(target: UpstreamTarget, opts: { timeoutMs: number; proxyProtocol?: "v1" | "v2" }): Promise<ProbeResult>;
}

export interface HealthOptions {
  /** The pools of the current runtime. */
  pools: () => Iterable<Pool>;
  probes: HealthProbes;
  log: Logger;
  audit: Audit;
  /** Told of every active-check change (the primary passes them on to worker threads). */
  onActiveChange?: (pool: Pool, b: Backend, down: boolean) => void;
  /**
   * Given in a worker thread: where its passive verdicts go (to the primary,
   * which announces them), instead of being announced here.
   */
  reportPassive?: (pool: Pool, b: Backend, untilMs: number, reason: string) => void;
}

/** Success counts for active checks, kept per backend object. */
const streaks = new WeakMap<Backend, { ok: number; fail: number; running: boolean }>();

function streakOf(b: Backend) {
  let s = streaks.get(b);
  if (!s) {
    s = { ok: 0, fail: 0, running: false };
    streaks.set(b, s);
  }
  return s;
}

export function isHealthyStatus(status: number, expect: readonly number[] | undefined): boolean {
  return expect ? expect.includes(status) : status >= 200 && status < 400;
}

export class HealthMonitor {
  private timers: ReturnType<typeof setInterval>[] = [];
  /** Backends down by passive checks, to announce their return. */
  private readonly passiveDown = new Map<Backend, Pool>();

  constructor(private readonly opts: HealthOptions) {}

  /** (Re)starts the active checks for the current pools, and the sweep that ends passive marks. */
  start(): void {
    this.stop();
    for (const pool of this.opts.pools()) {
      const hc = pool.healthCheck;
      if (!hc) continue;
      const tick = () => {
        for (const b of pool.backends) void this.checkOne(pool, b, hc);
      };
      this.timers.push(setInterval(tick, hc.intervalMs));
      tick();
    }
    this.timers.push(setInterval(() => this.sweepPassive(), SWEEP_MS));
  }

  stop(): void {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
  }

  private announce(pool: Pool, b: Backend, health: "up" | "down", reason: string) {
    const fields = { pool: pool.name, backend: b.id, health, reason };
    if (health === "down") this.opts.log.warn("backend down", fields);
    else this.opts.log.info("backend up", fields);
    this.opts.audit.emit("backend.state", fields);
  }

  private async checkOne(pool: Pool, b: Backend, hc: HealthCheck): Promise<void> {
    const s = streakOf(b);
    if (s.running) return;
    s.running = true;
    let result: ProbeResult;
    try {
      // tls-passthrough pools (tcp:// backends): a TCP connect instead of an HTTP request.
      const { tcp, sendProxyProtocol } = pool.settings;
      result = tcp
        ? await this.opts.probes.tcp(b.target, {
            timeoutMs: hc.timeoutMs,
            ...(sendProxyProtocol ? { proxyProtocol: sendProxyProtocol } : {}),
          })
        : await this.opts.probes.http(b.target, hc);
    } catch (e) {
      result = { ok: false, reason: (e as { code?: string }).code ?? "check failed" };
    } finally {
      s.running = false;
    }
    if (result.ok) {
      s.fail = 0;
      s.ok++;
      if (b.activeDown && s.ok >= hc.rise) {
        b.activeDown = false;
        this.announce(pool, b, "up", `${s.ok} checks passed`);
        this.opts.onActiveChange?.(pool, b, false);
      }
    } else {
      s.ok = 0;
      s.fail++;
      if (!b.activeDown && s.fail >= hc.fall) {
        b.activeDown = true;
        this.announce(pool, b, "down", `${s.fail} checks failed (${result.reason})`);
        this.opts.onActiveChange?.(pool, b, true);
      }
    }
  }

  /** A backend answered a proxied request: a 5xx is a failure with failOn5xx; anything else ends the run. */
  answered(pool: Pool, b: Backend, status: number): void {
    if (status >= 500 && pool.settings.failOn5xx) this.failed(pool, b, `status ${status}`);
    else if (b.consecutiveFails !== 0) b.consecutiveFails = 0;
  }

  /** A connection to the backend opened (tls-passthrough): its run of passive failures ends. */
  succeeded(b: Backend): void {
    if (b.consecutiveFails !== 0) b.consecutiveFails = 0;
  }

  /** A connect error or timeout (or a 5xx with failOn5xx) seen on real traffic in this thread. */
  failed(pool: Pool, b: Backend, reason: string): void {
    const { maxFails, failTimeoutMs } = pool.settings;
    if (maxFails === 0) return;
    const now = Date.now();
    // Already down: failures of requests sent before the verdict start no new run.
    if (b.passiveDownUntil > now) return;
    if (++b.consecutiveFails < maxFails) return;
    const why = `${b.consecutiveFails} consecutive failures (${reason})`;
    const untilMs = now + failTimeoutMs;
    if (this.opts.reportPassive) {
      this.adopt(b, untilMs);
      this.opts.reportPassive(pool, b, untilMs, why);
    } else {
      this.markDown(pool, b, untilMs, why);
    }
  }

  /**
   * A verdict a worker thread reached, in the thread that announces (the
   * primary). Applied and announced unless the backend is down by passive
   * checks already (another worker's verdict came first): true when it was news.
   */
  verdict(pool: Pool, b: Backend, untilMs: number, reason: string): boolean {
    if (b.passiveDownUntil > Date.now()) return false;
    this.markDown(pool, b, untilMs, reason);
    return true;
  }

  /** A verdict announced elsewhere, applied in this thread without a word. */
  adopt(b: Backend, untilMs: number): void {
    b.passiveDownUntil = untilMs;
    b.consecutiveFails = 0;
  }

  private markDown(pool: Pool, b: Backend, untilMs: number, reason: string) {
    this.adopt(b, untilMs);
    this.passiveDown.set(b, pool);
    this.announce(pool, b, "down", reason);
  }

  private sweepPassive() {
    const now = Date.now();
    for (const [b, pool] of this.passiveDown) {
      if (b.passiveDownUntil > now) continue;
      this.passiveDown.delete(b);
      b.passiveDownUntil = 0;
      b.consecutiveFails = 0;
      if (!b.activeDown) this.announce(pool, b, "up", "failTimeoutMs passed");
    }
  }
}
