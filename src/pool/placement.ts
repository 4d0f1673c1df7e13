/**
 * The one place that places a request, for every protocol (HTTP, WebSocket
 * upgrades, TLS passthrough): learned entries fetched from the cluster, the
 * persistence chain's decision, the next choice after a failed attempt, and
 * once the request is served, the placement audit events, the decision
 * metric and the backend's session statistics. The maxConn slot is
 * Backend.acquire/release (pool.ts); the protocols only move bytes.
 */
import type { Audit } from "../audit.ts";
import type { ClusterLookup, ProxyMetrics } from "../contracts.ts";
import type { PlaceResult } from "../persistence/chain.ts";
import type { Decision, Placement, RequestFacts } from "../persistence/types.ts";
import { ProxyError } from "../proxy/errors.ts";
import { hashKey } from "../ring/hash.ts";
import type { Backend, Pool } from "./pool.ts";

/** The first decision that is not "none": the rule that named the session (a loop, not a closure per request). */
function deciding(decisions: readonly Decision[]): Exclude<Decision, { kind: "none" }> | undefined {
  for (const d of decisions) if (d.kind !== "none") return d;
  return undefined;
}

export interface PlacementDeps {
  audit: Audit;
  metrics: ProxyMetrics;
  cluster?: ClusterLookup | null;
}

/**
 * The one decision step that waits on I/O: a session ID this instance has not
 * learned is looked up in the cluster first (bounded by the lookup's own
 * timeout; a miss or timeout places the request as new).
 */
export async function prefetchLearned(
  pool: Pool,
  facts: RequestFacts,
  cluster: ClusterLookup | null | undefined,
): Promise<void> {
  if (!cluster || pool.chain.tables.size === 0) return;
  const missing = pool.chain.missingKeys(facts);
  if (missing.length === 0) return;
  await Promise.all(
    missing.map(async ({ table, key }) => {
      const hit = await cluster.lookup(pool.name, table, key);
      if (hit && pool.get(hit.backendId))
        pool.chain.tables.get(table)?.putHashed(key, hit.backendId, hit.expiresAtSec, facts.nowSec);
      // A miss (or a timeout, or a backend not in this pool) is not asked again for a while.
      else pool.chain.tables.get(table)?.noteMiss(key, facts.nowSec);
    }),
  );
}

/**
 * One request's (or connection's) placement, from the first choice through
 * retries to the backend that served it.
 */
export class Placing {
  private first: Placement | null = null;
  private tried: Set<string> | null = null;
  /** A session held by strict failover: the backend it waits for. */
  private held: Placement | null = null;

  constructor(
    readonly pool: Pool,
    readonly facts: RequestFacts,
    /** The listener it arrived on, for audit lines. */
    private readonly listener: string,
    private readonly deps: PlacementDeps,
  ) {}

  /** Fetches learned entries another instance holds; call before start() when a cluster is configured. */
  prefetch(): Promise<void> {
    return prefetchLearned(this.pool, this.facts, this.deps.cluster);
  }

  /** The first choice, with rejected tokens audited and counted. Null: no eligible backend. */
  start(): Placement | null {
    const placed = this.pool.chain.place(this.facts);
    if (placed) this.reportRejections(placed);
    this.first = placed?.placement ?? null;
    if (this.first?.outcome === "held") return this.hold(this.first, "backend-unavailable");
    return this.first;
  }

  /** True once strict failover held the session (start or next gave null for it). */
  get isHeld(): boolean {
    return this.held !== null;
  }

  /**
   * Why there is no placement, as the client's error: a session held by
   * strict failover (503 with Retry-After), else no eligible backend.
   */
  noPlacement(): ProxyError {
    if (this.held !== null)
      return new ProxyError(
        "SESSION_HELD",
        `${this.held.backendId} unavailable`,
        false,
        this.pool.settings.retryAfterSec,
      );
    return new ProxyError("NO_BACKEND", `pool ${this.pool.name}`);
  }

  /** Strict failover keeps the session off every other backend: audited, and no placement. */
  private hold(p: Placement, why: string): null {
    this.held = p;
    this.deps.audit.emit("session.held", {
      listener: this.listener,
      pool: this.pool.name,
      client: this.facts.clientIp,
      backend: p.backendId,
      rule: p.rule,
      why,
    });
    return null;
  }

  /**
   * The next choice for the same session after `failed` could not be used
   * (its connect failed, or it had no room): the ring's next eligible backend
   * for the session key, never one already tried. Null: none left.
   */
  next(failed: Placement): Placement | null {
    this.tried ??= new Set();
    this.tried.add(failed.backendId);
    const p = this.pool.chain.place(this.facts, this.tried, failed)?.placement ?? null;
    if (p?.outcome === "held") return this.hold(p, "connect-failed");
    return p;
  }

  /** The backend a placement names (the chain only names members of its pool). */
  backendOf(p: Placement): Backend {
    return this.pool.get(p.backendId) as Backend;
  }

  /**
   * The request was served on `final`: a new or moved session is audited, the
   * decision counted, and the session noted on its backend.
   */
  settle(final: Placement): void {
    const pool = this.pool;
    if (pool.chain.rules.length === 0) return;
    const first = this.first ?? final;
    const backend = this.backendOf(final);
    // A returning session on its own backend, the common case, is no event.
    if (final.outcome === "new" || final.outcome === "repinned" || final.backendId !== first.backendId)
      this.auditMove(first, final);
    const outcome = final.outcome === "repinned" ? "repinned" : final.outcome === "new" ? "miss" : "hit";
    const rule = final.rule === "new" ? "none" : final.rule;
    let series = pool.decisionSeries.get(rule);
    if (series === undefined) {
      series = this.deps.metrics.decisionSeries(pool.name, rule);
      pool.decisionSeries.set(rule, series);
    }
    series.count(outcome);
    const now = Date.now();
    const pinned = deciding(final.decisions);
    if (final.outcome === "hit" && pinned?.kind === "pinned") backend.lastPinnedAt = now;
    // The deciding rule's key is the session's identity; only a brand-new session needs its key spelled out.
    if (pinned?.kind === "pinned" && pinned.keyHash !== undefined) backend.sessions.add(pinned.keyHash, now);
    else {
      const sessionId =
        pinned?.key ?? (final.sessionKey ? Buffer.from(final.sessionKey).toString("hex") : null);
      if (sessionId) backend.sessions.add(hashKey(sessionId), now);
    }
  }

  private auditMove(first: Placement, final: Placement): void {
    const common = {
      listener: this.listener,
      pool: this.pool.name,
      client: this.facts.clientIp,
      backend: final.backendId,
      rule: final.rule,
    };
    if (final.outcome === "new") {
      this.deps.audit.emit("session.created", common);
      return;
    }
    const pinnedTo = first.decisions.find((d) => d.kind === "pinned");
    const from = pinnedTo?.kind === "pinned" ? pinnedTo.backendId : first.backendId;
    const why = final.rebalanced
      ? "rebalanced"
      : final.backendId !== first.backendId
        ? "connect-failed"
        : "backend-unavailable";
    this.deps.audit.emit("session.repinned", { ...common, from, to: final.backendId, why });
  }

  private reportRejections(placed: PlaceResult): void {
    if (placed.rejections.length === 0) return;
    const { audit, metrics } = this.deps;
    const common = { listener: this.listener, pool: this.pool.name, client: this.facts.clientIp };
    for (const r of placed.rejections) {
      metrics.rejected(r.reason);
      metrics.decision(this.pool.name, r.rule, "rejected");
      audit.emit("persistence.rejected", { ...common, rule: r.rule, reason: r.reason });
      if (r.reason === "expired") audit.emit("session.expired", { ...common, rule: r.rule });
    }
  }
}
