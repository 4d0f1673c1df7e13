/**
 * Backend health: active checks on a timer per pool, passive marks from real
 * traffic. Every change is logged and audited (event "backend.state").
 *
 * Active: GET healthCheck.path every intervalMs (a TCP connect for the tcp://
 * backends of tls-passthrough pools); `fall` consecutive failures
 * mark a backend down, `rise` consecutive successes mark it up again.
 * Passive: `maxFails` consecutive connect errors or timeouts (and 5xx answers
 * with failOn5xx) mark it down for failTimeoutMs.
 */
import type { Audit } from "../audit.ts";
import type { Runtime } from "../contracts.ts";
import type { Logger } from "../log.ts";
import { probeTcp } from "../passthrough/probe.ts";
import { UpstreamClient } from "../proxy/upstream/client.ts";
import type { Backend, Pool } from "./pool.ts";

const SWEEP_MS = 500;

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
  private readonly client = new UpstreamClient({ maxIdlePerTarget: 1 });
  /** Backends seen down by passive checks, to announce their return. */
  private readonly passiveDown = new Map<Backend, Pool>();

  constructor(
    private readonly current: () => Runtime,
    private readonly log: Logger,
    private readonly audit: Audit,
    /** Told of every change (the primary passes it on to worker threads). */
    private readonly onChange: (pool: Pool, b: Backend, down: boolean) => void = () => {},
  ) {}

  /** (Re)starts the timers for the current runtime's pools. */
  start(): void {
    this.stopTimers();
    for (const pool of this.current().pools.values()) {
      const hc = pool.healthCheck;
      if (!hc) continue;
      const tick = () => {
        for (const b of pool.backends) void this.checkOne(pool, b);
      };
      this.timers.push(setInterval(tick, hc.intervalMs));
      tick();
    }
    this.timers.push(setInterval(() => this.sweepPassive(), SWEEP_MS));
  }

  stop(): void {
    this.stopTimers();
    this.client.close();
  }

  private stopTimers() {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
  }

  private announce(pool: Pool, b: Backend, health: "up" | "down", reason: string) {
    const fields = { pool: pool.name, backend: b.id, health, reason };
    if (health === "down") this.log.warn("backend down", fields);
    else this.log.info("backend up", fields);
    this.audit.emit("backend.state", fields);
    this.onChange(pool, b, health === "down");
  }

  private async checkOne(pool: Pool, b: Backend): Promise<void> {
    const hc = pool.healthCheck;
    const s = streakOf(b);
    if (!hc || s.running) return;
    s.running = true;
    let ok = false;
    let why = "";
    // tls-passthrough pools (tcp:// backends): a TCP connect instead of an HTTP request.
    const tcpPool = this.current().config.pools[pool.name];
    const tcp = tcpPool?.backends[0]?.tcp
      ? probeTcp(b.target.hostname, b.target.port, {
          timeoutMs: hc.timeoutMs,
          ...(tcpPool.sendProxyProtocol ? { proxyProtocol: tcpPool.sendProxyProtocol } : {}),
        })
      : null;
    try {
      if (tcp) {
        const r = await tcp;
        ok = r.ok;
        why = r.reason;
      } else {
        const res = await this.client.request(
          b.target,
          {
            method: "GET",
            target: hc.path,
            headers: [
              ["host", `${b.target.hostname}:${b.target.port}`],
              ["user-agent", "tether-health-check"],
            ],
            body: null,
            bodyLength: null,
          },
          {
            connectTimeoutMs: hc.timeoutMs,
            responseTimeoutMs: hc.timeoutMs,
            signal: AbortSignal.timeout(hc.timeoutMs),
          },
        );
        if (res.body instanceof ReadableStream) await res.body.cancel();
        ok = isHealthyStatus(res.status, hc.expectStatus);
        why = `status ${res.status}`;
      }
    } catch (e) {
      why = (e as { code?: string }).code ?? "check failed";
    } finally {
      s.running = false;
    }
    if (ok) {
      s.fail = 0;
      s.ok++;
      if (b.activeDown && s.ok >= hc.rise) {
        b.activeDown = false;
        this.announce(pool, b, "up", `${s.ok} checks passed`);
      }
    } else {
      s.ok = 0;
      s.fail++;
      if (!b.activeDown && s.fail >= hc.fall) {
        b.activeDown = true;
        this.announce(pool, b, "down", `${s.fail} checks failed (${why})`);
      }
    }
  }

  /** A connect error or timeout (or a 5xx with failOn5xx) seen on real traffic. */
  failed(pool: Pool, b: Backend, reason: string): void {
    const { maxFails, failTimeoutMs } = pool.settings;
    if (maxFails === 0) return;
    b.consecutiveFails++;
    if (b.consecutiveFails >= maxFails && b.passiveDownUntil <= Date.now()) {
      b.passiveDownUntil = Date.now() + failTimeoutMs;
      this.passiveDown.set(b, pool);
      this.announce(pool, b, "down", `${b.consecutiveFails} consecutive failures (${reason})`);
    }
  }

  /** A backend answered: a 5xx counts as a failure with failOn5xx; any other answer ends the run. */
  answered(pool: Pool, b: Backend, status: number): void {
    if (status >= 500 && pool.settings.failOn5xx) this.failed(pool, b, `status ${status}`);
    else this.succeeded(b);
  }

  /** A backend was reached: its run of passive failures ends. */
  succeeded(b: Backend): void {
    if (b.consecutiveFails !== 0) b.consecutiveFails = 0;
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
