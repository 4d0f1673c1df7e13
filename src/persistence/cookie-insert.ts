/**
 * cookie, mode "insert": tether issues its own sealed cookie (token.ts) that
 * names the backend. Idle and lifetime limits are enforced here from the
 * token, never trusted to the browser.
 */
import { randomBytes } from "node:crypto";
import { getCookie, mapCookie } from "./cookies.ts";
import { backendKey, TokenSealer } from "./token.ts";
import type { Decision, Effect, Placement, RequestFacts, ResponseFacts, Rule } from "./types.ts";

export interface CookieInsertOptions {
  name: string;
  sameSite: "Lax" | "Strict" | "None";
  domain?: string | undefined;
  maxAgeMs?: number | undefined;
  maxIdleMs?: number | undefined;
  maxLifeMs?: number | undefined;
  refreshAfterMs: number;
}

export const newSessionKey = () => new Uint8Array(randomBytes(16));
export const sessionKeyText = (k: Uint8Array) => Buffer.from(k).toString("hex");

export class CookieInsertRule implements Rule {
  readonly name = "cookie-insert" as const;
  private readonly sealer: TokenSealer;
  private readonly byKey = new Map<bigint, string>();
  /** Per decision, the claims of the token it opened (for re-issue with the same issue time). */
  private readonly issued = new WeakMap<
    Decision,
    { issuedAt: number; sessionKey: Uint8Array; stale: boolean }
  >();

  constructor(
    private readonly opts: CookieInsertOptions,
    pool: string,
    keys: readonly Buffer[],
    backendIds: readonly string[],
  ) {
    this.sealer = new TokenSealer(keys, pool, opts.name);
    for (const id of backendIds) this.byKey.set(backendKey(id), id);
  }

  decide(req: RequestFacts): Decision {
    const token = getCookie(req.cookie, this.opts.name);
    if (token === null) return { kind: "none", rule: this.name };
    const opened = this.sealer.open(token);
    if (!opened.ok) return { kind: "none", rule: this.name, rejected: opened.reason };
    const { claims } = opened;
    const { maxIdleMs, maxLifeMs } = this.opts;
    if (
      (maxLifeMs !== undefined && (req.nowSec - claims.issuedAt) * 1000 > maxLifeMs) ||
      (maxIdleMs !== undefined && (req.nowSec - claims.lastSeen) * 1000 > maxIdleMs)
    ) {
      return { kind: "none", rule: this.name, rejected: "expired" };
    }
    const backendId = this.byKey.get(claims.backendKey);
    if (backendId === undefined) return { kind: "none", rule: this.name, rejected: "unknown-backend" };
    const refresh = opened.stale || (req.nowSec - claims.lastSeen) * 1000 >= this.opts.refreshAfterMs;
    const decision: Decision = {
      kind: "pinned",
      backendId,
      key: sessionKeyText(claims.sessionKey),
      rule: this.name,
      refresh,
    };
    this.issued.set(decision, {
      issuedAt: claims.issuedAt,
      sessionKey: claims.sessionKey,
      stale: opened.stale,
    });
    return decision;
  }

  backendCookie(cookie: string): string {
    return mapCookie(cookie, this.opts.name, () => null);
  }

  remember(req: RequestFacts, placement: Placement, own: Decision, res: ResponseFacts): Effect[] {
    const hitHere = placement.rule === this.name && placement.outcome === "hit";
    if (hitHere && own.kind === "pinned" && !own.refresh) return [];
    const prior = this.issued.get(own);
    const sessionKey = placement.sessionKey ?? prior?.sessionKey ?? newSessionKey();
    const issuedAt = hitHere && prior ? prior.issuedAt : req.nowSec;
    const token = this.sealer.seal({
      sessionKey,
      backendKey: backendKey(placement.backendId),
      issuedAt,
      lastSeen: req.nowSec,
    });
    return [{ kind: "set-cookie", header: this.setCookie(token, res.secure) }, { kind: "cache-private" }];
  }

  private setCookie(token: string, secureListener: boolean): string {
    const o = this.opts;
    let h = `${o.name}=${token}; Path=/; HttpOnly; SameSite=${o.sameSite}`;
    // SameSite=None is only honoured with Secure (RFC 6265bis §5.4.7).
    if (secureListener || o.sameSite === "None") h += "; Secure";
    if (o.domain) h += `; Domain=${o.domain}`;
    if (o.maxAgeMs !== undefined) h += `; Max-Age=${Math.floor(o.maxAgeMs / 1000)}`;
    return h;
  }
}
