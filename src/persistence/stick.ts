/**
 * "stick": true on a hashing rule (client-ip, header hash): each key's first
 * placement is remembered in the rule's own bounded table, so a backend that
 * joins later moves none of them (HAProxy's `stick on src`). A key the ring
 * placed is learned where it was served; a remembered key whose backend can no
 * longer serve it is learned again where it moved.
 *
 * These are the only tables that hold keys a client chose (an address, a
 * header value): each rule has its own table with its own maxEntries, so a
 * flood of invented keys evicts entries of that table only, never sessions
 * another rule learned.
 */
import type { StickTable } from "./stick-table.ts";
import type { Decision, Effect, Placement, RequestFacts, ResponseFacts, Rule, RuleName } from "./types.ts";

const NO_EFFECTS: Effect[] = [];

export class StickyHashRule implements Rule {
  readonly name: RuleName;

  constructor(
    private readonly inner: Rule,
    readonly table: StickTable,
  ) {
    this.name = inner.name;
  }

  decide(req: RequestFacts): Decision {
    const d = this.inner.decide(req);
    if (d.kind !== "hash") return d;
    const entry = this.table.get(d.key, req.nowSec);
    return entry ? { kind: "pinned", backendId: entry.backendId, key: d.key, rule: this.name } : d;
  }

  lookupKey(req: RequestFacts): number | null {
    const d = this.inner.decide(req);
    return d.kind === "hash" ? this.table.keyOf(d.key) : null;
  }

  remember(_req: RequestFacts, placement: Placement, own: Decision, _res: ResponseFacts): Effect[] {
    if (own.kind === "none" || deciding(placement.decisions) !== own) return NO_EFFECTS;
    // A hashed key's first placement, or a remembered key that had to move.
    if (own.kind === "hash" || own.backendId !== placement.backendId)
      return [{ kind: "learn", rule: this.name, key: own.key, backendId: placement.backendId }];
    return NO_EFFECTS;
  }
}

/** The first decision that is not "none": the one that placed the request. */
function deciding(decisions: readonly Decision[]): Decision | undefined {
  for (const d of decisions) if (d.kind !== "none") return d;
  return undefined;
}
