/**
 * Prometheus metrics. prom-client owns the registry, the text format and the
 * process metrics; the per-request series are kept in plain Maps and arrays
 * and handed to the registry when scraped. prom-client's own labelled
 * counters and histograms hash their label objects on every call: measured
 * here at ~3 µs for one request's updates (bench/micro/metrics.bench.ts),
 * well over the 2% of a ~40 µs request the budget allows; the plain
 * accumulators cost a small fraction of that.
 *
 * prom-client itself is imported only when metrics are served (load()): it
 * costs ~11 MiB of RSS in the binary, a fifth of an idle tether, and traffic
 * listeners and workers never need it.
 */
import type { Registry } from "prom-client";
import type { DecisionCounter, DecisionOutcome, RequestCounter, Runtime } from "../contracts.ts";
import type { Backend } from "../pool/pool.ts";

type Labels = Record<string, string>;
interface Value {
  labels: Labels;
  value: number;
  metricName?: string;
}

const matches = (labels: Labels, match: Labels) => Object.entries(match).every(([k, v]) => labels[k] === v);

/** A counter family: one number per label combination, found by a joined key. */
class CounterFamily {
  private readonly series = new Map<string, { labels: Labels; value: number; sent: number }>();

  constructor(
    readonly name: string,
    readonly help: string,
  ) {}

  readonly type = "counter";

  inc(key: string, labels: () => Labels): void {
    const s = this.series.get(key);
    if (s) s.value++;
    else this.series.set(key, { labels: labels(), value: 1, sent: 0 });
  }

  /** The series for `key`, created at 0: a caller that keeps it increments `value` without a lookup. */
  cell(key: string, labels: Labels): { value: number } {
    let s = this.series.get(key);
    if (!s) {
      s = { labels, value: 0, sent: 0 };
      this.series.set(key, s);
    }
    return s;
  }

  /** Drops every series whose labels match all of `match` (a backend that left). */
  forget(match: Labels): void {
    for (const [key, s] of this.series) if (matches(s.labels, match)) this.series.delete(key);
  }

  /** Increments since the last call (a worker sends these to the primary). */
  drain(): [Labels, number][] {
    const out: [Labels, number][] = [];
    for (const s of this.series.values()) {
      if (s.value === s.sent) continue;
      out.push([s.labels, s.value - s.sent]);
      s.sent = s.value;
    }
    return out;
  }

  absorb(deltas: [Labels, number][]): void {
    for (const [labels, n] of deltas) {
      const key = Object.values(labels).join("\0");
      const s = this.series.get(key);
      if (s) s.value += n;
      else this.series.set(key, { labels, value: n, sent: 0 });
    }
  }

  get() {
    const values: Value[] = [...this.series.values()].map((s) => ({ labels: s.labels, value: s.value }));
    return { name: this.name, help: this.help, type: this.type, values, aggregator: "sum" };
  }
}

interface HistogramSeries {
  labels: Labels;
  counts: Float64Array;
  sum: number;
  count: number;
  /** What a worker has already sent to the primary. */
  sent: { counts: Float64Array; sum: number; count: number };
}

/** A histogram family with fixed buckets. */
class HistogramFamily {
  readonly type = "histogram";
  private readonly series = new Map<string, HistogramSeries>();

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly bounds: readonly number[],
  ) {}

  observe(key: string, labels: () => Labels, v: number): void {
    this.observeIn(this.series.get(key) ?? this.cell(key, labels()), v);
  }

  /** The series for `key`, created empty: a caller that keeps it observes without a lookup. */
  cell(key: string, labels: Labels): HistogramSeries {
    let s = this.series.get(key);
    if (!s) {
      const n = this.bounds.length;
      s = {
        labels,
        counts: new Float64Array(n),
        sum: 0,
        count: 0,
        sent: { counts: new Float64Array(n), sum: 0, count: 0 },
      };
      this.series.set(key, s);
    }
    return s;
  }

  observeIn(s: HistogramSeries, v: number): void {
    s.sum += v;
    s.count++;
    for (let i = 0; i < this.bounds.length; i++) {
      if (v <= (this.bounds[i] as number)) {
        (s.counts as Float64Array)[i] = (s.counts[i] as number) + 1;
        break;
      }
    }
  }

  drain(): [Labels, number[], number, number][] {
    const out: [Labels, number[], number, number][] = [];
    for (const s of this.series.values()) {
      if (s.count === s.sent.count) continue;
      out.push([
        s.labels,
        Array.from(s.counts, (c, i) => c - (s.sent.counts[i] as number)),
        s.sum - s.sent.sum,
        s.count - s.sent.count,
      ]);
      s.sent = { counts: Float64Array.from(s.counts), sum: s.sum, count: s.count };
    }
    return out;
  }

  absorb(deltas: [Labels, number[], number, number][]): void {
    for (const [labels, counts, sum, count] of deltas) {
      const key = Object.values(labels).join("\0");
      let s = this.series.get(key);
      if (!s) {
        const n = this.bounds.length;
        s = {
          labels,
          counts: new Float64Array(n),
          sum: 0,
          count: 0,
          sent: { counts: new Float64Array(n), sum: 0, count: 0 },
        };
        this.series.set(key, s);
      }
      counts.forEach((c, i) => {
        if (i < this.bounds.length) (s.counts as Float64Array)[i] = (s.counts[i] as number) + c;
      });
      s.sum += sum;
      s.count += count;
    }
  }

  get() {
    const values: Value[] = [];
    for (const s of this.series.values()) {
      let cumulative = 0;
      this.bounds.forEach((le, i) => {
        cumulative += s.counts[i] as number;
        values.push({
          labels: { ...s.labels, le: String(le) },
          value: cumulative,
          metricName: `${this.name}_bucket`,
        });
      });
      values.push({ labels: { ...s.labels, le: "+Inf" }, value: s.count, metricName: `${this.name}_bucket` });
      values.push({ labels: s.labels, value: s.sum, metricName: `${this.name}_sum` });
      values.push({ labels: s.labels, value: s.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: "sum" };
  }
}

export class Metrics {
  private registry: Promise<Registry> | null = null;
  private readonly requests = new CounterFamily(
    "tether_requests_total",
    "Requests answered, by listener, pool, backend and status code",
  );
  private readonly duration = new HistogramFamily(
    "tether_request_duration_seconds",
    "Time from request received to response head sent",
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  );
  private readonly connectErrors = new CounterFamily(
    "tether_upstream_connect_errors_total",
    "Failed or timed-out connects to backends",
  );
  private readonly decisions = new CounterFamily(
    "tether_persistence_decisions_total",
    "Persistence decisions by rule and outcome (hit, miss, rejected, repinned)",
  );
  private readonly cookieRejected = new CounterFamily(
    "tether_cookie_rejected_total",
    "Persistence tokens or cookies rejected, by reason",
  );

  private readonly discovery = new CounterFamily(
    "tether_discovery_lookups_total",
    "DNS discovery lookups by pool and outcome (ok, failed, empty: the last set is kept; capped: records ignored over maxBackends)",
  );

  constructor(private readonly current: () => Runtime) {}

  /**
   * The registry, built on first call. The admin listener calls this when it
   * starts, so the process metrics (GC, event loop) cover the whole run.
   */
  load(): Promise<Registry> {
    this.registry ??= import("prom-client").then(({ collectDefaultMetrics, Gauge, Registry }) => {
      const registry = new Registry();
      for (const family of [
        this.requests,
        this.duration,
        this.connectErrors,
        this.decisions,
        this.cookieRejected,
        this.discovery,
      ]) {
        // The registry only calls get() and reads name/help/type: a plain family object is enough.
        registry.registerMetric(family as never);
      }
      const registers = [registry];
      const current = this.current;
      const perBackend = (name: string, help: string, value: (b: Backend) => number) =>
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
      perBackend("tether_backend_websockets", "WebSockets open to the backend", (b) => b.websockets);
      perBackend("tether_sessions_active", "Distinct sessions seen in the active window (estimate)", (b) =>
        b.sessions.count(Date.now()),
      );
      new Gauge({
        name: "tether_pool_backends",
        help: "Backends in each pool, by where they came from (config, dns, api)",
        labelNames: ["pool", "source"],
        registers,
        collect() {
          this.reset();
          for (const pool of current().pools.values()) {
            const counts: Record<string, number> = { config: 0, dns: 0, api: 0 };
            for (const b of pool.backends) counts[b.source] = (counts[b.source] ?? 0) + 1;
            for (const [source, n] of Object.entries(counts)) this.set({ pool: pool.name, source }, n);
          }
        },
      });
      collectDefaultMetrics({ register: registry });
      return registry;
    });
    return this.registry;
  }

  /**
   * The request series of one listener, pool and backend, resolved once (the
   * backend keeps it): counting a request then costs a Map lookup by status
   * code and no key string.
   */
  requestSeries(listener: string, pool: string, backend: string): RequestCounter {
    const requests = this.requests;
    const byCode = new Map<number, { value: number }>();
    const duration = this.duration.cell(`${listener}\0${pool}`, { listener, pool });
    const histogram = this.duration;
    return {
      count(code, seconds) {
        let cell = byCode.get(code);
        if (cell === undefined) {
          cell = requests.cell(`${listener}\0${pool}\0${backend}\0${code}`, {
            listener,
            pool,
            backend,
            code: String(code),
          });
          byCode.set(code, cell);
        }
        cell.value++;
        histogram.observeIn(duration, seconds);
      },
    };
  }

  /**
   * A backend left its pool (a reload removed it): its series go, so the
   * scrape stops reporting it. Series are resolved when a backend first
   * serves a request, and dropped here.
   */
  forgetBackend(pool: string, backend: string): void {
    for (const c of [this.requests, this.connectErrors]) c.forget({ pool, backend });
  }

  /** The decision series of one pool and rule, resolved once (the pool keeps it). */
  decisionSeries(pool: string, rule: string): DecisionCounter {
    const cell = (outcome: DecisionOutcome) =>
      this.decisions.cell(`${pool}\0${rule}\0${outcome}`, { pool, rule, outcome });
    const cells = {
      hit: cell("hit"),
      miss: cell("miss"),
      rejected: cell("rejected"),
      repinned: cell("repinned"),
    };
    return {
      count(outcome) {
        cells[outcome].value++;
      },
    };
  }

  request(listener: string, pool: string, backend: string, code: number, seconds: number): void {
    this.requests.inc(`${listener}\0${pool}\0${backend}\0${code}`, () => ({
      listener,
      pool,
      backend,
      code: String(code),
    }));
    this.duration.observe(`${listener}\0${pool}`, () => ({ listener, pool }), seconds);
  }

  connectError(pool: string, backend: string): void {
    this.connectErrors.inc(`${pool}\0${backend}`, () => ({ pool, backend }));
  }

  decision(pool: string, rule: string, outcome: "hit" | "miss" | "rejected" | "repinned"): void {
    this.decisions.inc(`${pool}\0${rule}\0${outcome}`, () => ({ pool, rule, outcome }));
  }

  /** A DNS discovery lookup's outcome (counted in the thread that looks up: the primary). */
  discoveryLookup(pool: string, outcome: string): void {
    this.discovery.inc(`${pool}\0${outcome}`, () => ({ pool, outcome }));
  }

  rejected(reason: string): void {
    this.cookieRejected.inc(reason, () => ({ reason }));
  }

  private get families() {
    return {
      counters: [this.requests, this.connectErrors, this.decisions, this.cookieRejected],
      histograms: [this.duration],
    };
  }

  /** Per-request series' increments since the last call, for a worker to send to the primary. */
  drain(): {
    counters: Record<string, [Labels, number][]>;
    histograms: Record<string, [Labels, number[], number, number][]>;
  } {
    const { counters, histograms } = this.families;
    return {
      counters: Object.fromEntries(counters.map((c) => [c.name, c.drain()])),
      histograms: Object.fromEntries(histograms.map((h) => [h.name, h.drain()])),
    };
  }

  /** Adds a worker's increments. */
  absorb(d: {
    counters: Record<string, [Labels, number][]>;
    histograms: Record<string, [Labels, number[], number, number][]>;
  }): void {
    const { counters, histograms } = this.families;
    for (const c of counters) c.absorb(d.counters[c.name] ?? []);
    for (const h of histograms) h.absorb(d.histograms[h.name] ?? []);
  }

  /** The Prometheus text and its content type. */
  async text(): Promise<{ body: string; contentType: string }> {
    const registry = await this.load();
    return { body: await registry.metrics(), contentType: registry.contentType };
  }
}
