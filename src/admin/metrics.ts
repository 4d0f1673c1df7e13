/**
 * Prometheus metrics (prom-client, its own registry). Hot-path counters keep
 * their labelled children in a Map so a request costs a lookup and an add,
 * not prom-client's label hashing. Gauges that describe state (backend up,
 * in flight, active sessions) are computed when scraped.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { Runtime } from "../server/runtime.ts";

type Inc = { inc(n?: number): void };

export class Metrics {
  readonly registry = new Registry();
  private readonly requests: Counter<"listener" | "pool" | "backend" | "code">;
  private readonly duration: Histogram<"listener" | "pool">;
  private readonly connectErrors: Counter<"pool" | "backend">;
  private readonly decisions: Counter<"pool" | "rule" | "outcome">;
  private readonly cookieRejected: Counter<"reason">;
  private readonly children = new Map<string, Inc>();
  private readonly timers = new Map<string, { observe(v: number): void }>();

  constructor(current: () => Runtime) {
    const registers = [this.registry];
    this.requests = new Counter({
      name: "tether_requests_total",
      help: "Requests answered, by listener, pool, backend and status code",
      labelNames: ["listener", "pool", "backend", "code"],
      registers,
    });
    this.duration = new Histogram({
      name: "tether_request_duration_seconds",
      help: "Time from request received to response head sent",
      labelNames: ["listener", "pool"],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.connectErrors = new Counter({
      name: "tether_upstream_connect_errors_total",
      help: "Failed or timed-out connects to backends",
      labelNames: ["pool", "backend"],
      registers,
    });
    this.decisions = new Counter({
      name: "tether_persistence_decisions_total",
      help: "Persistence decisions by rule and outcome (hit, miss, rejected, repinned)",
      labelNames: ["pool", "rule", "outcome"],
      registers,
    });
    this.cookieRejected = new Counter({
      name: "tether_cookie_rejected_total",
      help: "Persistence tokens or cookies rejected, by reason",
      labelNames: ["reason"],
      registers,
    });
    const perBackend = (
      name: string,
      help: string,
      value: (b: import("../pool/pool.ts").Backend) => number,
    ) =>
      new Gauge({
        name,
        help,
        labelNames: ["pool", "backend"],
        registers,
        collect() {
          this.reset();
          for (const pool of current().pools.values()) {
            for (const b of pool.backends) this.set({ pool: pool.name, backend: b.id }, value(b));
          }
        },
      });
    perBackend("tether_backend_up", "1 when the backend is up (health checks), 0 when down", (b) =>
      b.down ? 0 : 1,
    );
    perBackend("tether_backend_inflight", "Requests in flight to the backend", (b) => b.inflight);
    perBackend("tether_sessions_active", "Distinct sessions seen in the active window (estimate)", (b) =>
      b.sessions.count(Date.now()),
    );
    collectDefaultMetrics({ register: this.registry });
  }

  private child(key: string, make: () => Inc): Inc {
    let c = this.children.get(key);
    if (!c) {
      c = make();
      this.children.set(key, c);
    }
    return c;
  }

  request(listener: string, pool: string, backend: string, code: number, seconds: number): void {
    this.child(`r\0${listener}\0${pool}\0${backend}\0${code}`, () =>
      this.requests.labels({ listener, pool, backend, code: String(code) }),
    ).inc();
    const tk = `${listener}\0${pool}`;
    let t = this.timers.get(tk);
    if (!t) {
      t = this.duration.labels({ listener, pool });
      this.timers.set(tk, t);
    }
    t.observe(seconds);
  }

  connectError(pool: string, backend: string): void {
    this.child(`c\0${pool}\0${backend}`, () => this.connectErrors.labels({ pool, backend })).inc();
  }

  decision(pool: string, rule: string, outcome: "hit" | "miss" | "rejected" | "repinned"): void {
    this.child(`d\0${pool}\0${rule}\0${outcome}`, () => this.decisions.labels({ pool, rule, outcome })).inc();
  }

  rejected(reason: string): void {
    this.child(`x\0${reason}`, () => this.cookieRejected.labels({ reason })).inc();
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
}
