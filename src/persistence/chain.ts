/**
 * A pool's persistence chain: its rules in config order, and the one place
 * where their decisions become a backend.
 *
 * Precedence: every rule is asked (so each can refresh or re-issue what it
 * owns); the first decision that names an eligible backend wins. A pinned
 * session whose backend is down or in maintenance moves to the ring's next
 * eligible choice for its session key, the same on every instance, unless the
 * pool's failover is "strict": then it is held (503, see Placing). A request
 * that no rule places starts a new session with a random 128-bit key, placed
 * by the ring with bounded loads.
 */

import { createHmac } from "node:crypto";
import type { PersistenceRuleConfig } from "../config/schema.ts";
import { BoundedLoad } from "../ring/bounded-load.ts";
import { hashKey } from "../ring/hash.ts";
import { HashRing } from "../ring/hash-ring.ts";
import { ClientIpRule } from "./client-ip.ts";
import { CookieInsertRule, newSessionKey, sessionKeyText } from "./cookie-insert.ts";
import { CookieLearnRule } from "./cookie-learn.ts";
import { CookiePrefixRule } from "./cookie-prefix.ts";
import { HeaderLearnRule, HeaderPrefixRule, HeaderRule } from "./header.ts";
import { Rebalancer } from "./rebalance.ts";
import { StickyHashRule } from "./stick.ts";
import { StickTable } from "./stick-table.ts";
import { TlsSessionRule } from "./tls-session.ts";
import type {
  Decision,
  Effect,
  Placement,
  RejectReason,
  RequestFacts,
  ResponseFacts,
  Rule,
  RuleName,
  ServerHelloLearner,
} from "./types.ts";
import { UrlRule } from "./url.ts";

/** What the chain needs to know about a backend; Pool's Backend satisfies it. */
export interface Member {
  readonly id: string;
  readonly weight: number;
  state: "ready" | "drain" | "maint";
  inflight: number;
  /** Open WebSockets: they load a backend as requests do. */
  websockets?: number;
  /** Set while a backend is known to be unreachable. */
  down?: boolean;
}

/** Takes new sessions: ready, up and weighted. */
export const eligibleForNew = (m: Member) => m.state === "ready" && !m.down && m.weight > 0;
/** Keeps the sessions already pinned to it: ready or draining, and up. */
export const eligibleForPinned = (m: Member) => (m.state === "ready" || m.state === "drain") && !m.down;

export interface Rejection {
  rule: RuleName;
  reason: RejectReason;
}

const NO_REJECTIONS: Rejection[] = [];
const NO_EFFECTS: Effect[] = [];

export interface PlaceResult {
  placement: Placement;
  rejections: Rejection[];
}

export interface ChainOptions {
  pool: string;
  rules: readonly PersistenceRuleConfig[];
  /** Cookie keys: the first seals. */
  keys: readonly Buffer[];
  hashBalanceFactor: number;
  /** "strict": a pinned session whose backend cannot serve it is held (outcome "held"), never moved. Default "move". */
  failover?: "move" | "strict";
  /** Stick tables from the previous generation, reused by rule position and type so a reload keeps learned sessions. */
  previousTables?: ReadonlyMap<string, StickTable>;
  /** Memberships the previous generations served (rebalance.ts), so a balanced rule knows who joined. */
  previousMemberships?: ReadonlyMap<number, ReadonlySet<string>>;
}

function tableSecret(keys: readonly Buffer[], pool: string): Buffer {
  return createHmac("sha256", keys[0] as Buffer)
    .update(`stick-table\0${pool}`)
    .digest();
}

function buildRule(
  r: PersistenceRuleConfig,
  opts: ChainOptions,
  ids: readonly string[],
  tableFor: (expireMs: number, maxEntries: number, name?: string) => StickTable,
  rebalancer: Rebalancer,
): Rule {
  switch (r.type) {
    case "cookie":
      if (r.mode === "insert")
        return new CookieInsertRule(
          r,
          opts.pool,
          opts.keys,
          ids,
          r.rebalance === "balanced" ? rebalancer : null,
        );
      if (r.mode === "prefix") return new CookiePrefixRule(r.name, opts.pool, opts.keys, ids);
      return new CookieLearnRule(r.name, tableFor(r.expireMs, r.maxEntries));
    case "url": {
      const learned = tableFor(r.expireMs, r.maxEntries);
      if (!r.stick) return new UrlRule(r.param, r.pathParam, learned);
      const stick = tableFor(r.expireMs, r.stickMaxEntries ?? r.maxEntries, "url-stick");
      stick.clusterShared = r.share === true;
      return new UrlRule(r.param, r.pathParam, learned, stick);
    }
    case "client-ip": {
      const rule = new ClientIpRule(r.ipv4Prefix, r.ipv6Prefix);
      return r.stick
        ? sticky(rule, tableFor(r.expireMs ?? STICK_EXPIRE_MS, r.maxEntries ?? STICK_MAX_ENTRIES), r.share)
        : rule;
    }
    case "header":
      if (r.mode === "learn") return new HeaderLearnRule(r.name, tableFor(r.expireMs, r.maxEntries));
      if (r.mode === "prefix") return new HeaderPrefixRule(r.name, opts.pool, opts.keys, ids);
      return r.stick
        ? sticky(
            new HeaderRule(r.name),
            tableFor(r.expireMs ?? STICK_EXPIRE_MS, r.maxEntries ?? STICK_MAX_ENTRIES),
            r.share,
          )
        : new HeaderRule(r.name);
    case "tls-session":
      return new TlsSessionRule(tableFor(r.expireMs, r.maxEntries));
  }
}

/** A stick table's defaults, those of every learned table (config/schema.ts tableOptions). */
const STICK_EXPIRE_MS = 1_800_000;
const STICK_MAX_ENTRIES = 1_000_000;

function sticky(rule: Rule, table: StickTable, share: boolean | undefined): Rule {
  table.clusterShared = share === true;
  return new StickyHashRule(rule, table);
}

export class PersistenceChain {
  readonly rules: Rule[];
  readonly tables = new Map<string, StickTable>();
  /** Some rule rewrites the request's fields (backendFields): false keeps the common path from asking. */
  readonly rewritesFields: boolean;
  private readonly ruleTypes: string[];
  private readonly ring: HashRing;
  private readonly bounded: BoundedLoad;
  private readonly byId = new Map<string, Member>();
  private readonly helloLearner: ServerHelloLearner | null;
  private readonly strict: boolean;
  /** Results of first-attempt hits by decision object (see placeByOnlyRule); they die with their decision. */
  private readonly hits = new WeakMap<Decision, PlaceResult>();
  /** This generation's membership version and the ones before it (rebalance.ts). */
  readonly rebalancer: Rebalancer;

  constructor(
    readonly members: readonly Member[],
    opts: ChainOptions,
  ) {
    for (const m of members) this.byId.set(m.id, m);
    this.strict = opts.failover === "strict";
    this.ruleTypes = opts.rules.map((r) => r.type);
    const ids = members.map((m) => m.id);
    this.ring = new HashRing(members.map((m) => ({ id: m.id, weight: m.weight })));
    this.bounded = new BoundedLoad(this.ring, opts.hashBalanceFactor, (id) => {
      const m = this.byId.get(id);
      return m ? m.inflight + (m.websockets ?? 0) : 0;
    });
    this.rebalancer = new Rebalancer(ids, (h) => this.ring.lookup(h), opts.previousMemberships);
    this.rules = opts.rules.map((r, i) => {
      // A rule's table is named by its position and type; a second table of the rule by its own name.
      const tableFor = (expireMs: number, maxEntries: number, name: string = r.type) => {
        const key = `${i}:${name}`;
        const old = opts.previousTables?.get(key);
        const table =
          old && old.expireMs === expireMs && old.maxEntries === maxEntries
            ? old
            : new StickTable(tableSecret(opts.keys, opts.pool), expireMs, maxEntries);
        this.tables.set(key, table);
        return table;
      };
      return buildRule(r, opts, ids, tableFor, this.rebalancer);
    });
    this.rewritesFields = this.rules.some((r) => r.backendFields);
    const hello = this.rules.find((r) => r.learnServerHello);
    this.helloLearner = hello?.learnServerHello ? { learn: hello.learnServerHello.bind(hello) } : null;
  }

  /**
   * The backend the ring puts a key hash on among all its members, whatever
   * their state: what a membership change moves can be counted without
   * placing requests.
   */
  ringOwner(keyHash: number): string | null {
    return this.ring.lookup(keyHash);
  }

  /** Backends the ring left out (a seed equal to another's): they take no new sessions. */
  get refusedByRing(): readonly { id: string; reason: string }[] {
    return this.ring.refused;
  }

  /** What a passthrough tunnel tells about the backend's ServerHello, or null when no rule learns from it. */
  serverHelloLearner(): ServerHelloLearner | null {
    return this.helloLearner;
  }

  private eligibleNew = (id: string) => {
    const m = this.byId.get(id);
    return m !== undefined && eligibleForNew(m);
  };

  /** Where the ring puts `key` among eligible backends, skipping `exclude`. */
  private ringChoice(key: string, exclude?: ReadonlySet<string>): string | null {
    return exclude?.size
      ? this.ringLookup(hashKey(key), exclude)
      : this.ring.lookup(hashKey(key), this.eligibleNew);
  }

  /** A ring lookup that skips the backends a retry already tried (apart, so place() allocates no closure scope). */
  private ringLookup(keyHash: number, exclude: ReadonlySet<string>): string | null {
    return this.ring.lookup(keyHash, (id) => this.eligibleNew(id) && !exclude.has(id));
  }

  /**
   * Places a request. `exclude` lists backends that already failed for this
   * request (a retry), so the next choice in the same key's order is taken.
   */
  place(req: RequestFacts, exclude?: ReadonlySet<string>, previous?: Placement): PlaceResult | null {
    if (previous === undefined && this.rules.length === 1) return this.placeByOnlyRule(req, exclude);
    return this.placeBy(previous?.decisions ?? this.decideAll(req), exclude, previous);
  }

  /**
   * The common chain, one rule, placing a first attempt. A returning session
   * on an eligible backend gets the result made for its decision before: a
   * rule that caches its decisions (cookie insert keeps one per token) makes
   * the whole hit allocation-free.
   */
  private placeByOnlyRule(req: RequestFacts, exclude?: ReadonlySet<string>): PlaceResult | null {
    const d = (this.rules[0] as Rule).decide(req);
    if (d.kind === "pinned" && !exclude?.size && d.rebalanceTo === undefined) {
      const m = this.byId.get(d.backendId);
      if (m !== undefined && eligibleForPinned(m)) {
        let hit = this.hits.get(d);
        if (hit === undefined) {
          hit = { placement: this.placement(d, m.id, "hit", [d]), rejections: NO_REJECTIONS };
          this.hits.set(d, hit);
        }
        return hit;
      }
    }
    return this.placeBy([d], exclude);
  }

  private placeBy(
    decisions: Decision[],
    exclude?: ReadonlySet<string>,
    previous?: Placement,
  ): PlaceResult | null {
    // Shared and empty unless a rule rejected something: the common request allocates none.
    let rejections: Rejection[] = NO_REJECTIONS;
    for (const d of decisions) {
      if (d.kind === "none") {
        if (d.rejected) {
          if (rejections === NO_REJECTIONS) rejections = [];
          rejections.push({ rule: d.rule, reason: d.rejected });
        }
        continue;
      }
      if (d.kind === "pinned") {
        const m = this.byId.get(d.backendId);
        if (!m) {
          if (rejections === NO_REJECTIONS) rejections = [];
          rejections.push({ rule: d.rule, reason: "unknown-backend" });
          continue;
        }
        // A backend joined since the session was placed and owns its key now: the session moves there.
        const joined = d.rebalanceTo === undefined ? undefined : this.byId.get(d.rebalanceTo);
        if (joined !== undefined && eligibleForNew(joined) && !exclude?.has(joined.id)) {
          const placement = this.placement(d, joined.id, "repinned", decisions);
          placement.rebalanced = true;
          return { placement, rejections };
        }
        if (eligibleForPinned(m) && !exclude?.has(m.id)) {
          return { placement: this.placement(d, m.id, "hit", decisions, previous), rejections };
        }
        if (this.strict) return { placement: this.placement(d, m.id, "held", decisions), rejections };
        const moved = this.ringChoice(d.key, exclude);
        if (moved)
          return { placement: this.placement(d, moved, "repinned", decisions, previous), rejections };
        continue;
      }
      const id = this.ringChoice(d.key, exclude);
      if (id) return { placement: this.placement(d, id, "hash", decisions, previous), rejections };
    }
    // A new session; a retry keeps the key it was given. Without rules there is no session to
    // name, only a spread to make: a random ring position, with no key bytes to draw and encode.
    let sessionKey: Uint8Array | null = null;
    let keyHash: number;
    if (previous?.rule === "new") {
      sessionKey = previous.sessionKey;
      keyHash = previous.keyHash ?? hashKey(sessionKeyText(sessionKey as Uint8Array));
    } else if (this.rules.length === 0) keyHash = (Math.random() * 2 ** 32) >>> 0;
    else {
      sessionKey = newSessionKey();
      keyHash = hashKey(sessionKeyText(sessionKey));
    }
    const id = exclude?.size
      ? this.ringLookup(keyHash, exclude)
      : this.bounded.pick(keyHash, this.eligibleNew);
    if (!id) return null;
    return {
      placement: {
        backendId: id,
        rule: "new",
        outcome: previous ? "repinned" : "new",
        sessionKey,
        keyHash,
        decisions,
      },
      rejections,
    };
  }

  /**
   * The session a request names in this pool, for a traffic split: the first
   * decision that is not "none" (pinned: a session living here; hash: a key
   * the ring places), or null.
   */
  sessionOf(req: RequestFacts): Exclude<Decision, { kind: "none" }> | null {
    for (const rule of this.rules) {
      const d = rule.decide(req);
      if (d.kind !== "none") return d;
    }
    return null;
  }

  private decideAll(req: RequestFacts): Decision[] {
    const rules = this.rules;
    const out: Decision[] = new Array(rules.length);
    for (let i = 0; i < rules.length; i++) out[i] = (rules[i] as Rule).decide(req);
    return out;
  }

  private placement(
    d: Decision,
    backendId: string,
    outcome: Placement["outcome"],
    decisions: Decision[],
    previous?: Placement,
  ): Placement {
    return {
      backendId,
      rule: d.rule,
      outcome: previous && outcome === "hit" ? "repinned" : outcome,
      sessionKey: d.kind === "pinned" ? (d.session?.sessionKey ?? null) : null,
      decisions,
    };
  }

  /**
   * Learned-table keys this request would look up that the local tables do
   * not hold, and that were not just looked up in vain: what a cluster lookup
   * should fetch before the decision. A lookup that finds nothing is reported
   * with the table's noteMiss.
   */
  missingKeys(req: RequestFacts): { table: string; key: number }[] {
    const out: { table: string; key: number }[] = [];
    this.rules.forEach((rule, i) => {
      if (!rule.table || !rule.lookupKey) return;
      const key = rule.lookupKey(req);
      const table = rule.table;
      if (key === null || table.peekHashed(key, req.nowSec)) return;
      if (!table.missedRecently(key, req.nowSec)) out.push({ table: `${i}:${this.ruleTypes[i]}`, key });
      // Not learned here: the rule's stick table (url with "stick") may hold it, here or elsewhere.
      const stick = rule.stickTable;
      if (stick && !stick.peekHashed(key, req.nowSec) && !stick.missedRecently(key, req.nowSec))
        out.push({ table: `${i}:${this.ruleTypes[i]}-stick`, key });
    });
    return out;
  }

  /** The Cookie header the backend should see. */
  backendCookie(cookie: string): string {
    let out = cookie;
    for (const r of this.rules) if (r.backendCookie) out = r.backendCookie(out);
    return out;
  }

  /** Rewrites the request's fields for the backend, in place (only when rewritesFields). */
  backendFields(fields: string[]): void {
    for (const r of this.rules) r.backendFields?.(fields);
  }

  /** Effects of every rule once the backend answered; "learn" effects are applied here. */
  remember(req: RequestFacts, placement: Placement, res: ResponseFacts): Effect[] {
    let effects: Effect[] = NO_EFFECTS;
    for (let i = 0; i < this.rules.length; i++) {
      const rule = this.rules[i] as Rule;
      if (!rule.remember) continue;
      const own = placement.decisions[i] ?? { kind: "none", rule: rule.name };
      for (const e of rule.remember(req, placement, own, res)) {
        if (e.kind === "learn") this.learn(i, e.key, e.backendId, req.nowSec, e.stick);
        else if (effects === NO_EFFECTS) effects = [e];
        else effects.push(e);
      }
    }
    return effects;
  }

  private learn(ruleIndex: number, key: string, backendId: string, nowSec: number, stick?: true) {
    const rule = this.rules[ruleIndex];
    (stick ? rule?.stickTable : rule?.table)?.set(key, backendId, nowSec);
  }
}
