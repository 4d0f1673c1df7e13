/**
 * url: a session ID carried in the URL, as a query parameter (?sid=ABC) or a
 * path parameter (/cart;jsessionid=ABC?x=1). Looked up in the stick table
 * (learned from Set-Cookie of the same name and from Location headers that
 * carry it), else hashed on the ring. The URL reaches the backend unchanged.
 *
 * Only IDs a backend issued are learned. An ID that only a client ever sent
 * is placed by the ring and never stored there: anyone can make IDs up, and
 * each stored one would evict a learned session and cost a cluster write.
 *
 * With "stick", such an ID's first placement is remembered in a second table
 * of its own (bounded by stickMaxEntries), so a backend that joins moves none
 * of them: a flood of invented IDs evicts only entries of that table, never a
 * learned session, and reaches Redis only with "share".
 */
import { isDeletion, parseSetCookie } from "./cookies.ts";
import type { StickTable } from "./stick-table.ts";
import type { Decision, Effect, Placement, RequestFacts, ResponseFacts, Rule } from "./types.ts";

const MAX_ID_LENGTH = 256;

/** The value of query parameter `param` or path parameter `pathParam` in a request target. */
export function sessionIdFromTarget(target: string, param?: string, pathParam?: string): string | null {
  const q = target.indexOf("?");
  const path = q === -1 ? target : target.slice(0, q);
  if (pathParam) {
    const marker = `;${pathParam}=`;
    const at = path.indexOf(marker);
    if (at !== -1) {
      const start = at + marker.length;
      const end = path.slice(start).search(/[;/]/);
      const v = end === -1 ? path.slice(start) : path.slice(start, start + end);
      if (v) return v;
    }
  }
  if (param && q !== -1) {
    for (const pair of target.slice(q + 1).split("&")) {
      const eq = pair.indexOf("=");
      if (eq === -1 || pair.slice(0, eq) !== param) continue;
      const v = pair.slice(eq + 1).split("#")[0] as string;
      if (v) return v;
    }
  }
  return null;
}

export class UrlRule implements Rule {
  readonly name = "url" as const;
  /** With "stick": IDs no backend issued, where the ring first placed them. */
  readonly stickTable?: StickTable;

  constructor(
    private readonly param: string | undefined,
    private readonly pathParam: string | undefined,
    readonly table: StickTable,
    stickTable?: StickTable,
  ) {
    if (stickTable) this.stickTable = stickTable;
  }

  private idFrom(target: string): string | null {
    const id = sessionIdFromTarget(target, this.param, this.pathParam);
    return id && id.length <= MAX_ID_LENGTH ? id : null;
  }

  decide(req: RequestFacts): Decision {
    const id = this.idFrom(req.target);
    if (id === null) return { kind: "none", rule: this.name };
    const entry = this.table.get(id, req.nowSec);
    if (entry) return { kind: "pinned", backendId: entry.backendId, key: id, rule: this.name };
    const stuck = this.stickTable?.get(id, req.nowSec);
    if (stuck) return { kind: "pinned", backendId: stuck.backendId, key: id, rule: this.name, stuck: true };
    return { kind: "hash", key: id, rule: this.name };
  }

  /** The table key this request would look up, if its URL carries a session ID. */
  lookupKey(req: RequestFacts): number | null {
    const id = this.idFrom(req.target);
    return id === null ? null : this.table.keyOf(id);
  }

  remember(req: RequestFacts, placement: Placement, own: Decision, res: ResponseFacts): Effect[] {
    const learned = new Set<string>();
    for (const header of res.setCookies) {
      const c = parseSetCookie(header);
      const names = [this.param, this.pathParam].map((n) => n?.toLowerCase());
      if (!c || !names.includes(c.name.toLowerCase()) || isDeletion(c.value, c.attrs)) continue;
      learned.add(c.value);
    }
    if (res.location) {
      const loc = res.location.replace(/^[a-z]+:\/\/[^/]*/i, "");
      const id = this.idFrom(loc.startsWith("/") ? loc : `/${loc}`);
      if (id) learned.add(id);
    }
    // A learned session that was re-placed is learned again where it now lives.
    if (own.kind === "pinned" && !own.stuck && own.backendId !== placement.backendId) learned.add(own.key);
    void req;
    const effects: Effect[] = [...learned]
      .filter((k) => k.length <= MAX_ID_LENGTH)
      .map((key) => ({ kind: "learn", rule: this.name, key, backendId: placement.backendId }));
    // With stick: an ID this rule placed by the ring (its first placement, or a remembered one that
    // had to move) is remembered in the stick table, unless the backend just issued it.
    if (
      this.stickTable &&
      own.kind !== "none" &&
      !learned.has(own.key) &&
      (own.kind === "hash" || own.backendId !== placement.backendId) &&
      deciding(placement.decisions) === own
    )
      effects.push({
        kind: "learn",
        rule: this.name,
        key: own.key,
        backendId: placement.backendId,
        stick: true,
      });
    return effects;
  }
}

/** The first decision that is not "none": the one that placed the request. */
function deciding(decisions: readonly Decision[]): Decision | undefined {
  for (const d of decisions) if (d.kind !== "none") return d;
  return undefined;
}
