/**
 * cookie, mode "learn": when a backend sets cookie NAME, remember
 * value → backend in the stick table, and route later requests carrying that
 * cookie there.
 */
import { getCookie, isDeletion, parseSetCookie } from "./cookies.ts";
import type { StickTable } from "./stick-table.ts";
import type { Decision, Effect, Placement, RequestFacts, ResponseFacts, Rule } from "./types.ts";

export class CookieLearnRule implements Rule {
  readonly name = "cookie-learn" as const;

  constructor(
    private readonly cookieName: string,
    readonly table: StickTable,
  ) {}

  decide(req: RequestFacts): Decision {
    const value = getCookie(req.cookie, this.cookieName);
    if (!value) return { kind: "none", rule: this.name };
    const entry = this.table.get(value, req.nowSec);
    if (!entry) return { kind: "none", rule: this.name };
    return { kind: "pinned", backendId: entry.backendId, key: value, rule: this.name };
  }

  /** The table key this request would look up, if it carries the cookie. */
  lookupKey(req: RequestFacts): number | null {
    const value = getCookie(req.cookie, this.cookieName);
    return value ? this.table.keyOf(value) : null;
  }

  remember(req: RequestFacts, placement: Placement, own: Decision, res: ResponseFacts): Effect[] {
    const effects: Effect[] = [];
    for (const header of res.setCookies) {
      const c = parseSetCookie(header);
      if (!c || c.name !== this.cookieName || isDeletion(c.value, c.attrs)) continue;
      effects.push({ kind: "learn", rule: this.name, key: c.value, backendId: placement.backendId });
    }
    // A learned session that was re-placed is learned again where it now lives.
    if (effects.length === 0 && own.kind === "pinned" && own.backendId !== placement.backendId) {
      effects.push({ kind: "learn", rule: this.name, key: own.key, backendId: placement.backendId });
    }
    void req;
    return effects;
  }
}
