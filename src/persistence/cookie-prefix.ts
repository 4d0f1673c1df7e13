/**
 * cookie, mode "prefix": the application's own session cookie (say
 * JSESSIONID) gets an opaque, authenticated route prefix on the way out
 * ("JSESSIONID=<route>~<value>") and loses it on the way in, so the
 * application sees exactly what it set (route-prefix.ts makes the routes).
 */
import { getCookie, isDeletion, mapCookie, parseSetCookie } from "./cookies.ts";
import { RoutePrefixes } from "./route-prefix.ts";
import type { Decision, Effect, Placement, RequestFacts, ResponseFacts, Rule } from "./types.ts";

export class CookiePrefixRule implements Rule {
  readonly name = "cookie-prefix" as const;
  private readonly routes: RoutePrefixes;

  constructor(
    private readonly cookieName: string,
    pool: string,
    keys: readonly Buffer[],
    backendIds: readonly string[],
  ) {
    this.routes = new RoutePrefixes(pool, keys, backendIds);
  }

  decide(req: RequestFacts): Decision {
    return this.routes.decide(getCookie(req.cookie, this.cookieName), this.name);
  }

  backendCookie(cookie: string): string {
    return mapCookie(cookie, this.cookieName, (v) => this.routes.inner(v) ?? v);
  }

  remember(req: RequestFacts, placement: Placement, own: Decision, res: ResponseFacts): Effect[] {
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
        header: `${c.name}=${this.routes.wrap(placement.backendId, c.value)}${c.attrs}`,
      });
    });
    // The session moved (or its route is under an old key) and the backend did not set the cookie: re-route it.
    const moved = own.kind === "pinned" && (placement.backendId !== own.backendId || own.refresh);
    if (!setByBackend && moved && own.kind === "pinned") {
      effects.push({
        kind: "set-cookie",
        header: `${this.cookieName}=${this.routes.wrap(placement.backendId, own.key)}; Path=/; HttpOnly${res.secure ? "; Secure" : ""}`,
      });
    }
    void req;
    return effects;
  }
}
