/**
 * cookie, mode "insert": tether issues its own sealed cookie (token.ts) that
 * names the backend. Idle and lifetime limits are enforced here from the
 * token, never trusted to the browser.
 */
import { randomBytes } from "node:crypto";
import { hashKey } from "../ring/hash.ts";
import { getCookie, mapCookie } from "./cookies.ts";
import type { Rebalancer } from "./rebalance.ts";
import { backendKey, type TokenClaims, TokenSealer } from "./token.ts";

/** Opened tokens remembered (about 200 bytes each). */
const OPENED_CACHE_MAX = 50_000;

import type {
  Decision,
  Effect,
  Placement,
  RejectReason,
  RequestFacts,
  ResponseFacts,
  Rule,
} from "./types.ts";

/** A token opened once: its claims and the decision it makes (null: it names no backend of this pool). */
interface Opened {
  claims: TokenClaims;
  /** Sealed under an older key, or (balanced) under an older membership: re-issue. */
  stale: boolean;
  backendId: string | null;
  decision: Extract<Decision, { kind: "pinned" }> | null;
}

export interface CookieInsertOptions {
  name: string;
  sameSite: "Lax" | "Strict" | "None";
  domain?: string | undefined;
  /** Path attribute (default "/"). */
  path?: string;
  /** Partitioned (CHIPS); the config requires SameSite=None with it. */
  partitioned?: boolean;
  maxAgeMs?: number | undefined;
  maxIdleMs?: number | undefined;
  maxLifeMs?: number | undefined;
  refreshAfterMs: number;
  /** What a backend joining does to existing sessions (rebalance.ts); default "persistent". */
  rebalance?: "persistent" | "balanced";
}

const dropCookie = () => null;
const NO_EFFECTS: Effect[] = [];

export const newSessionKey = () => new Uint8Array(randomBytes(16));
export const sessionKeyText = (k: Uint8Array) => Buffer.from(k).toString("hex");

export class CookieInsertRule implements Rule {
  readonly name = "cookie-insert" as const;
  private readonly sealer: TokenSealer;
  private readonly byKey = new Map<bigint, string>();
  /** "NAME=": how this rule's cookie starts in a Cookie header. */
  private readonly cookiePrefix: string;

  constructor(
    private readonly opts: CookieInsertOptions,
    pool: string,
    keys: readonly Buffer[],
    backendIds: readonly string[],
    /** Given with "rebalance": "balanced": cookies carry its membership version. */
    private readonly rebalancer: Rebalancer | null = null,
  ) {
    this.sealer = new TokenSealer(keys, pool, opts.name);
    this.cookiePrefix = `${opts.name}=`;
    for (const id of backendIds) this.byKey.set(backendKey(id), id);
  }

  /**
   * Tokens opened recently, by their exact text ("NAME=token"). A returning client sends the
   * same token on every request until it is refreshed, and the same text is
   * the same ciphertext, already authenticated: looking it up costs a Map
   * get instead of an AES-GCM open, and its decision is built once and
   * reused. Only valid tokens are kept; time limits are still checked on
   * every request. Bounded, oldest dropped first.
   */
  private readonly opened = new Map<string, Opened>();
  /** The decision for a request without this rule's cookie: the same object every time. */
  private readonly absent: Decision = { kind: "none", rule: this.name };

  /**
   * This rule's cookie as "NAME=token", the opened cache's key. The common
   * Cookie header, holding that cookie alone, is the key as it is: no slicing.
   */
  private cookiePair(header: string | null): string | null {
    if (header === null) return null;
    if (header.startsWith(this.cookiePrefix) && !header.includes(";") && !header.includes(" ")) return header;
    const token = getCookie(header, this.opts.name);
    return token === null ? null : this.cookiePrefix + token;
  }

  private open(pair: string): Opened | RejectReason {
    const hit = this.opened.get(pair);
    if (hit) return hit;
    const r = this.sealer.open(pair.slice(this.cookiePrefix.length));
    if (!r.ok) return r.reason;
    if (this.opened.size >= OPENED_CACHE_MAX) {
      const oldest = this.opened.keys().next();
      if (!oldest.done) this.opened.delete(oldest.value);
    }
    const backendId = this.byKey.get(r.claims.backendKey) ?? null;
    const key = sessionKeyText(r.claims.sessionKey);
    const keyHash = hashKey(key);
    const opened: Opened = {
      claims: r.claims,
      stale: r.stale,
      backendId,
      decision:
        backendId === null
          ? null
          : { kind: "pinned", backendId, key, keyHash, rule: this.name, refresh: false, session: r.claims },
    };
    // Balanced: a cookie from an older membership (a v1 cookie has none: it stays, as persistent) is
    // re-issued under this one, and its session moves if a backend that joined since owns its key.
    const placedUnder = r.claims.membership;
    const rb = this.rebalancer;
    if (rb !== null && placedUnder !== undefined && placedUnder !== rb.version && opened.decision) {
      opened.stale = true;
      const to = rb.moveTo(keyHash, opened.decision.backendId, placedUnder);
      if (to !== null) opened.decision.rebalanceTo = to;
    }
    this.opened.set(pair, opened);
    return opened;
  }

  decide(req: RequestFacts): Decision {
    const pair = this.cookiePair(req.cookie);
    if (pair === null) return this.absent;
    const opened = this.open(pair);
    if (typeof opened === "string") return { kind: "none", rule: this.name, rejected: opened };
    const { claims, decision } = opened;
    const { maxIdleMs, maxLifeMs } = this.opts;
    if (
      (maxLifeMs !== undefined && (req.nowSec - claims.issuedAt) * 1000 > maxLifeMs) ||
      (maxIdleMs !== undefined && (req.nowSec - claims.lastSeen) * 1000 > maxIdleMs)
    ) {
      return { kind: "none", rule: this.name, rejected: "expired" };
    }
    if (decision === null) return { kind: "none", rule: this.name, rejected: "unknown-backend" };
    const refresh = opened.stale || (req.nowSec - claims.lastSeen) * 1000 >= this.opts.refreshAfterMs;
    return refresh ? { ...decision, refresh } : decision;
  }

  backendCookie(cookie: string): string {
    // The common case, a Cookie header holding only tether's own cookie, needs no parsing.
    if (cookie.startsWith(this.cookiePrefix) && !cookie.includes(";")) return "";
    return mapCookie(cookie, this.opts.name, dropCookie);
  }

  remember(req: RequestFacts, placement: Placement, own: Decision, res: ResponseFacts): Effect[] {
    const hitHere = placement.rule === this.name && placement.outcome === "hit";
    if (hitHere && own.kind === "pinned" && !own.refresh) return NO_EFFECTS;
    const prior = own.kind === "pinned" ? own.session : undefined;
    const sessionKey = placement.sessionKey ?? prior?.sessionKey ?? newSessionKey();
    // A valid session keeps its issue time wherever it is re-issued (a refresh, a re-pin after
    // failover), so maxLifeMs counts from its first cookie.
    const issuedAt = prior && sessionKey === prior.sessionKey ? prior.issuedAt : req.nowSec;
    const claims: TokenClaims = {
      sessionKey,
      backendKey: backendKey(placement.backendId),
      issuedAt,
      lastSeen: req.nowSec,
    };
    if (this.rebalancer !== null) claims.membership = this.rebalancer.version;
    const token = this.sealer.seal(claims);
    return [{ kind: "set-cookie", header: this.setCookie(token, res.secure) }, { kind: "cache-private" }];
  }

  private setCookie(token: string, secureListener: boolean): string {
    const o = this.opts;
    let h = `${o.name}=${token}; Path=${o.path ?? "/"}; HttpOnly; SameSite=${o.sameSite}`;
    // SameSite=None is only honoured with Secure (RFC 6265bis §5.4.7).
    if (secureListener || o.sameSite === "None") h += "; Secure";
    if (o.domain) h += `; Domain=${o.domain}`;
    if (o.maxAgeMs !== undefined) h += `; Max-Age=${Math.floor(o.maxAgeMs / 1000)}`;
    // CHIPS: a cookie keyed by the top-level site too, for an app embedded in other sites.
    if (o.partitioned) h += "; Partitioned";
    return h;
  }
}
