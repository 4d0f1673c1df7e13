/**
 * The persistence engine's vocabulary. Rules are pure: they read request
 * facts and return a decision, and read response facts and return effects.
 * One place (chain.ts and the forwarder) applies the effects.
 */
import type { StickTable } from "./stick-table.ts";

export type RuleName =
  | "cookie-insert"
  | "cookie-prefix"
  | "cookie-learn"
  | "url"
  | "client-ip"
  | "header"
  | "tls-session";

export type RejectReason = "malformed" | "bad-mac" | "expired" | "unknown-key" | "unknown-backend";

/** A request field by name, as Headers.get answers it. */
export interface FieldLookup {
  get(name: string): string | null;
}

export interface RequestFacts {
  /** The raw Cookie header, or null. */
  cookie: string | null;
  /** Origin-form target, "/path;p?q". */
  target: string;
  clientIp: string;
  /** The request's fields by name (a Headers, or tether's HTTP/1.1 front end's own). */
  headers: FieldLookup;
  /** Seconds since the epoch. */
  nowSec: number;
  /** TLS passthrough: the ClientHello's legacy session ID (hex), when non-empty. */
  tlsSessionId?: string;
}

export type Decision =
  /** The request names a session remembered on a backend. `key` re-places it if that backend is gone. */
  | {
      kind: "pinned";
      backendId: string;
      key: string;
      rule: RuleName;
      refresh?: boolean;
      /** A sealed cookie's session: its key bytes and issue time, kept when the cookie is re-issued. */
      session?: { sessionKey: Uint8Array; issuedAt: number };
      /** hashKey(key), when the rule computed it once for a decision it reuses. */
      keyHash?: number;
      /** "rebalance": "balanced": a backend that joined since the session was placed, where it moves if eligible. */
      rebalanceTo?: string;
      /** url with "stick": found in the rule's stick table (an ID the ring placed), not its learned one. */
      stuck?: true;
    }
  /** A pure hash key: the ring places it, the same way on every instance. */
  | { kind: "hash"; key: string; rule: RuleName }
  | { kind: "none"; rule: RuleName; rejected?: RejectReason };

/** How the chosen backend was found. */
export type Outcome = "hit" | "hash" | "repinned" | "new" | "held";

/** What the forwarder tells the rules once it knows the backend. */
export interface Placement {
  backendId: string;
  /**
   * The rule whose decision placed the request, or "new". Outcome "held": the
   * session's backend (backendId) cannot serve it and the pool's failover is
   * strict, so the request is answered 503 instead of moving it.
   */
  rule: RuleName | "new";
  outcome: Outcome;
  /** The session key of a cookie session (new, or from a valid token). */
  sessionKey: Uint8Array | null;
  /** A new session's ring position, kept so a retry takes the next backend in the same order. */
  keyHash?: number;
  /** The decision of each rule, in order (for response-side effects). */
  decisions: Decision[];
  /** Outcome "repinned" because a backend joined (rebalanceTo), not because the session's backend failed. */
  rebalanced?: boolean;
}

export interface ResponseFacts {
  /** Set-Cookie values as sent by the backend. */
  setCookies: string[];
  location: string | null;
  cacheControl: string | null;
  /** Listener is https (cookies get Secure). */
  secure: boolean;
  /** A response field by its lowercase name (the first line), read only by the rules that ask. */
  header?(name: string): string | null;
}

export type Effect =
  | { kind: "set-cookie"; header: string }
  /** Replace the backend's Set-Cookie at `index` with `header`. */
  | { kind: "rewrite-set-cookie"; index: number; header: string }
  /** Set (replace) a response field towards the client. */
  | { kind: "set-header"; name: string; value: string }
  /** Stored in the rule's table, or with `stick` in its stick table (Rule.stickTable). */
  | { kind: "learn"; rule: RuleName; key: string; backendId: string; stick?: true }
  | { kind: "cache-private" };

/** Learns TLS session IDs from backends' ServerHellos (passthrough listeners). */
export interface ServerHelloLearner {
  /** Called with the session ID a backend's ServerHello issued or echoed. */
  learn(sessionId: string, backendId: string, nowSec: number): void;
}

export interface Rule {
  readonly name: RuleName;
  decide(req: RequestFacts): Decision;
  /** The Cookie header the backend should see (this rule's own cookie removed or un-prefixed). */
  backendCookie?(cookie: string): string;
  /** Rewrites, in place, the request's fields for the backend (flat: name, value, ...; lowercase names). */
  backendFields?(fields: string[]): void;
  /** Effects once the backend answered. */
  remember?(req: RequestFacts, placement: Placement, own: Decision, res: ResponseFacts): Effect[];
  /**
   * A rule that learns sessions: its table holds them, its "learn" effects
   * are stored there, and other threads, snapshots and Redis fill it.
   */
  readonly table?: StickTable;
  /** With a table: the key this request would look up in it, or null when it carries no session ID. */
  lookupKey?(req: RequestFacts): number | null;
  /**
   * A second table beside `table` (url with "stick"): keys no backend issued,
   * remembered where the ring first placed them. Looked up under the same key
   * as `table` (a pool's tables share one secret); "learn" effects with
   * `stick` are stored here.
   */
  readonly stickTable?: StickTable;
  /** A rule that learns from backends' ServerHellos (see ServerHelloLearner). */
  learnServerHello?(sessionId: string, backendId: string, nowSec: number): void;
}
