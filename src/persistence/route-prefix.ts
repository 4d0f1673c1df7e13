/**
 * Opaque route prefixes for a value the application issued (a session
 * cookie, a session header): "<route>~<value>" on the way out, the bare
 * value on the way in. The route is an HMAC of pool and backend id under each
 * cookie key: it names no backend, and cannot be made for a backend without
 * the key. The first key makes routes; every key reads them, so a route under
 * an older key is recognised and re-issued under the newest.
 */
import { createHmac } from "node:crypto";
import type { Decision, RuleName } from "./types.ts";

const SEP = "~";
/** 12 HMAC bytes in base64url. */
const ROUTE_CHARS = 16;

export interface RouteSplit {
  backendId: string;
  /** The application's own value. */
  inner: string;
  /** Made under an older key: re-issue it. */
  stale: boolean;
}

export class RoutePrefixes {
  private readonly routeOf = new Map<string, string>();
  private readonly backendOf = new Map<string, string>();

  /** `purpose` keeps one rule's routes from being replayed in another's (cookie vs header). */
  constructor(pool: string, keys: readonly Buffer[], backendIds: readonly string[], purpose = "route") {
    keys.forEach((key, k) => {
      for (const id of backendIds) {
        const route = createHmac("sha256", key)
          .update(`${purpose}\0${pool}\0${id}`)
          .digest()
          .subarray(0, 12)
          .toString("base64url");
        this.backendOf.set(route, id);
        if (k === 0) this.routeOf.set(id, route);
      }
    });
  }

  /** The value with the route of `backendId` in front. */
  wrap(backendId: string, inner: string): string {
    return `${this.routeOf.get(backendId) as string}${SEP}${inner}`;
  }

  /** The application's value inside a prefixed one, or null when it carries no prefix. */
  inner(value: string): string | null {
    return value.indexOf(SEP) === ROUTE_CHARS ? value.slice(ROUTE_CHARS + 1) : null;
  }

  /** What a rule decides from a value it found (null: none): pinned to the prefix's backend, or rejected. */
  decide(value: string | null, rule: RuleName): Decision {
    if (value === null) return { kind: "none", rule };
    const parts = this.split(value);
    if (typeof parts === "string") return { kind: "none", rule, rejected: parts };
    return { kind: "pinned", backendId: parts.backendId, key: parts.inner, rule, refresh: parts.stale };
  }

  /** "malformed": no prefix; "bad-mac": a prefix no key made for a backend of this pool. */
  split(value: string): RouteSplit | "malformed" | "bad-mac" {
    if (value.indexOf(SEP) !== ROUTE_CHARS) return "malformed";
    const route = value.slice(0, ROUTE_CHARS);
    const backendId = this.backendOf.get(route);
    if (backendId === undefined) return "bad-mac";
    return { backendId, inner: value.slice(ROUTE_CHARS + 1), stale: this.routeOf.get(backendId) !== route };
  }
}
