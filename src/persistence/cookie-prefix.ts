/**
 * cookie, mode "prefix": the application's own session cookie (say
 * JSESSIONID) gets an opaque, authenticated route prefix on the way out
 * ("JSESSIONID=<route>~<value>") and loses it on the way in, so the
 * application sees exactly what it set. The route is an HMAC of pool and
 * backend id under each cookie key: it names no backend, and cannot be made
 * for a backend without the key.
 */
import { createHmac } from "node:crypto";
import { getCookie, isDeletion, mapCookie, parseSetCookie } from "./cookies.ts";
import type { Decision, Effect, Placement, RequestFacts, ResponseFacts, Rule } from "./types.ts";

const SEP = "~";

export class CookiePrefixRule implements Rule {
  readonly name = "cookie-prefix" as const;
  private readonly routeOf = new Map<string, string>();
  private readonly backendOf = new Map<string, string>();

  constructor(
    private readonly cookieName: string,
    pool: string,
    keys: readonly Buffer[],
    backendIds: readonly string[],
  ) {
    keys.forEach((key, k) => {
      for (const id of backendIds) {
        const route = createHmac("sha256", key)
          .update(`route\0${pool}\0${id}`)
          .digest()
          .subarray(0, 12)
          .toString("base64url");
        this.backendOf.set(route, id);
        if (k === 0) this.routeOf.set(id, route);
      }
    });
  }

  private split(value: string): { route: string; inner: string } | null {
    const i = value.indexOf(SEP);
    if (i !== 16) return null;
    return { route: value.slice(0, i), inner: value.slice(i + 1) };
  }

  decide(req: RequestFacts): Decision {
    const value = getCookie(req.cookie, this.cookieName);
    if (value === null) return { kind: "none", rule: this.name };
    const parts = this.split(value);
    if (!parts) return { kind: "none", rule: this.name, rejected: "malformed" };
    const backendId = this.backendOf.get(parts.route);
    if (backendId === undefined) return { kind: "none", rule: this.name, rejected: "bad-mac" };
    // A route under an older key is re-issued under the newest.
    const refresh = this.routeOf.get(backendId) !== parts.route;
    return { kind: "pinned", backendId, key: parts.inner, rule: this.name, refresh };
  }

  backendCookie(cookie: string): string {
    return mapCookie(cookie, this.cookieName, (v) => this.split(v)?.inner ?? v);
  }

  remember(req: RequestFacts, placement: Placement, own: Decision, res: ResponseFacts): Effect[] {
    const route = this.routeOf.get(placement.backendId) as string;
    const effects: Effect[] = [];
    let setByBackend = false;
    res.setCookies.forEach((header, index) => {
      const c = parseSetCookie(header);
      if (!c || c.name !== this.cookieName) return;
      setByBackend = true;
      if (isDeletion(c.value, c.attrs)) return;
      effects.push({
        kind: "rewrite-set-cookie",
        index,
        header: `${c.name}=${route}${SEP}${c.value}${c.attrs}`,
      });
    });
    // The session moved (or its route is under an old key) and the backend did not set the cookie: re-route it.
    const moved = own.kind === "pinned" && (placement.backendId !== own.backendId || own.refresh);
    if (!setByBackend && moved && own.kind === "pinned") {
      effects.push({
        kind: "set-cookie",
        header: `${this.cookieName}=${route}${SEP}${own.key}; Path=/; HttpOnly${res.secure ? "; Secure" : ""}`,
      });
    }
    void req;
    return effects;
  }
}
