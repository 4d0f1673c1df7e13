/**
 * DNS discovery for the pools that have a discover block: a lookup loop per
 * pool (discovery/dns-lookup.ts), each answer reconciled with the pool's
 * discovered backends (discovery/reconcile.ts) and the changes handed to the
 * membership, which applies them in every thread. Runs in the thread that
 * owns the control plane.
 */
import type { Config } from "../config/load.ts";
import type { DiscoverConfig } from "../config/schema.ts";
import type { Logger } from "../log.ts";
import { createResolver, lookup } from "./dns-lookup.ts";
import { type DnsRecord, type Held, nextLookupMs, reconcile } from "./reconcile.ts";

/** Where discovered backends go, and what discovery needs to know of them. */
export interface DiscoverySink {
  /** The pool's discovered backends now (restored from a snapshot, or found earlier). */
  discovered(pool: string): DnsRecord[];
  /** Adds or updates `upsert`, starts removing `remove`; resolves once applied. */
  apply(pool: string, upsert: DnsRecord[], remove: string[]): Promise<void>;
  /** Known down by health checks. */
  isDown(pool: string, id: string): boolean;
  /** Discovery stopped for the pool (its discover block went): its backends leave. */
  stopped(pool: string): Promise<void>;
  /** Every lookup's outcome, for metrics. */
  counted(pool: string, outcome: "ok" | "failed" | "empty" | "capped"): void;
}

interface Loop {
  settings: string;
  timer: ReturnType<typeof setTimeout> | null;
  stopped: boolean;
}

export class DnsDiscovery {
  private readonly loops = new Map<string, Loop>();

  constructor(
    private readonly sink: DiscoverySink,
    private readonly log: Logger,
  ) {}

  /**
   * Runs one loop per pool with a discover block: a loop whose settings did
   * not change keeps running (and its hold counts); others are restarted,
   * and a pool that lost its block stops and lets its backends go.
   */
  follow(config: Config): void {
    const wanted = new Map<string, DiscoverConfig>();
    for (const [name, pool] of Object.entries(config.pools))
      if (pool.discover) wanted.set(name, pool.discover);
    for (const [name, loop] of this.loops) {
      const d = wanted.get(name);
      if (d && JSON.stringify(d) === loop.settings) continue;
      this.end(name, loop);
      if (!d) void this.sink.stopped(name);
    }
    for (const [name, d] of wanted) if (!this.loops.has(name)) this.begin(name, d);
  }

  stop(): void {
    for (const [name, loop] of this.loops) this.end(name, loop);
  }

  private end(name: string, loop: Loop): void {
    loop.stopped = true;
    if (loop.timer) clearTimeout(loop.timer);
    this.loops.delete(name);
  }

  private begin(pool: string, d: DiscoverConfig): void {
    const loop: Loop = { settings: JSON.stringify(d), timer: null, stopped: false };
    this.loops.set(pool, loop);
    const resolver = createResolver(d);
    const held = new Map<string, Held>(
      this.sink.discovered(pool).map((r) => [r.id, { record: r, missing: 0 }]),
    );
    let failing = false;
    const fields = { pool, dns: d.dns, type: d.type, ...(d.resolver ? { resolver: d.resolver } : {}) };
    const round = async () => {
      const answer = await lookup(resolver, d);
      if (loop.stopped) return;
      const r = reconcile({
        current: held,
        answer: "error" in answer ? null : answer.records,
        holdCount: d.holdCount,
        maxBackends: d.maxBackends,
        isDown: (id) => this.sink.isDown(pool, id),
      });
      this.sink.counted(pool, r.outcome);
      if (r.outcome !== "ok") {
        // Once per run of failures, not once per lookup; the metric counts each.
        if (!failing)
          this.log.warn("dns lookup gave no backends; keeping the last known set", {
            ...fields,
            outcome: r.outcome,
            ...("error" in answer ? { error: answer.error } : {}),
            kept: held.size,
          });
        failing = true;
      } else {
        if (failing) this.log.info("dns lookup answers again", { ...fields, records: held.size });
        failing = false;
        if (r.capped) {
          this.sink.counted(pool, "capped");
          this.log.warn("dns answer exceeds discover.maxBackends; records ignored", {
            ...fields,
            ignored: r.capped,
            maxBackends: d.maxBackends,
          });
        }
        held.clear();
        for (const [id, h] of r.next) held.set(id, h);
        if (r.upsert.length || r.remove.length) {
          this.log.info("dns answer changed the pool", {
            ...fields,
            added: r.upsert.map((x) => x.id),
            removing: r.remove,
          });
          await this.sink.apply(pool, r.upsert, r.remove);
        }
      }
      if (loop.stopped) return;
      const ttl = "error" in answer ? undefined : answer.ttlSec;
      loop.timer = setTimeout(tick, nextLookupMs(d.intervalMs, ttl));
    };
    const tick = () => {
      round().catch((e) => {
        this.log.error("dns discovery round failed", { ...fields, error: String(e) });
        if (!loop.stopped) loop.timer = setTimeout(tick, d.intervalMs);
      });
    };
    tick();
  }
}
