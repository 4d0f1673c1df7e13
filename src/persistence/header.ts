/**
 * header: a session named in a request header (X-Session-Id, or
 * Mcp-Session-Id for Streamable HTTP MCP servers), in one of three modes:
 *
 * - hash: the value is hashed on the ring, the same on every instance.
 * - learn: the value a backend issued in its response header of that name is
 *   remembered in a stick table (shared as cookie learn's are), and requests
 *   carrying it go to that backend. A value no backend issued is placed as a
 *   new session and never stored: anyone can make values up, and each stored
 *   one would evict a learned session and cost a cluster write.
 * - prefix: the client sees the backend's value behind an opaque, keyed route
 *   prefix and the backend gets its own value back (route-prefix.ts), so no
 *   table is needed and any instance with the same keys can route it.
 */
import { RoutePrefixes } from "./route-prefix.ts";
import type { StickTable } from "./stick-table.ts";
import type { Decision, Effect, Placement, RequestFacts, ResponseFacts, Rule } from "./types.ts";

const MAX_VALUE_LENGTH = 1024;
const NO_EFFECTS: Effect[] = [];

export class HeaderRule implements Rule {
  readonly name = "header" as const;

  constructor(private readonly header: string) {}

  decide(req: RequestFacts): Decision {
    const value = req.headers.get(this.header);
    if (!value || value.length > MAX_VALUE_LENGTH) return { kind: "none", rule: this.name };
    return { kind: "hash", key: `h:${value}`, rule: this.name };
  }
}

/** The header's value in a request, or null when absent or too long to be a session id. */
function requestValue(req: RequestFacts, header: string): string | null {
  const value = req.headers.get(header);
  return value && value.length <= MAX_VALUE_LENGTH ? value : null;
}

export class HeaderLearnRule implements Rule {
  readonly name = "header" as const;
  /** The lowercase field name. */
  private readonly header: string;

  constructor(
    header: string,
    readonly table: StickTable,
  ) {
    this.header = header.toLowerCase();
  }

  decide(req: RequestFacts): Decision {
    const value = requestValue(req, this.header);
    if (value === null) return { kind: "none", rule: this.name };
    const entry = this.table.get(value, req.nowSec);
    if (!entry) return { kind: "none", rule: this.name };
    return { kind: "pinned", backendId: entry.backendId, key: value, rule: this.name };
  }

  lookupKey(req: RequestFacts): number | null {
    const value = requestValue(req, this.header);
    return value === null ? null : this.table.keyOf(value);
  }

  remember(req: RequestFacts, placement: Placement, own: Decision, res: ResponseFacts): Effect[] {
    const issued = res.header?.(this.header) ?? null;
    const sent = own.kind === "pinned" ? own.key : null;
    // A value the backend echoes for a session this rule did not know is the client's own, not issued.
    if (issued !== null && issued.length <= MAX_VALUE_LENGTH && issued !== requestValue(req, this.header))
      return [{ kind: "learn", rule: this.name, key: issued, backendId: placement.backendId }];
    // A learned session that was re-placed is learned again where it now lives.
    if (sent !== null && own.kind === "pinned" && own.backendId !== placement.backendId)
      return [{ kind: "learn", rule: this.name, key: sent, backendId: placement.backendId }];
    return NO_EFFECTS;
  }
}

export class HeaderPrefixRule implements Rule {
  readonly name = "header" as const;
  private readonly header: string;
  private readonly routes: RoutePrefixes;

  constructor(header: string, pool: string, keys: readonly Buffer[], backendIds: readonly string[]) {
    this.header = header.toLowerCase();
    this.routes = new RoutePrefixes(pool, keys, backendIds, "header-route");
  }

  decide(req: RequestFacts): Decision {
    return this.routes.decide(requestValue(req, this.header), this.name);
  }

  /** The backend gets its own value back: the route prefix comes off the request's field. */
  backendFields(fields: string[]): void {
    for (let i = 0; i < fields.length; i += 2) {
      if (fields[i] !== this.header) continue;
      const inner = this.routes.inner(fields[i + 1] as string);
      if (inner !== null) fields[i + 1] = inner;
    }
  }

  remember(req: RequestFacts, placement: Placement, own: Decision, res: ResponseFacts): Effect[] {
    const issued = res.header?.(this.header) ?? null;
    if (issued !== null && issued.length <= MAX_VALUE_LENGTH)
      return [
        { kind: "set-header", name: this.header, value: this.routes.wrap(placement.backendId, issued) },
      ];
    // The session moved (or its route is under an old key) and the backend named none: re-route it.
    if (own.kind === "pinned" && (own.backendId !== placement.backendId || own.refresh))
      return [
        { kind: "set-header", name: this.header, value: this.routes.wrap(placement.backendId, own.key) },
      ];
    void req;
    return NO_EFFECTS;
  }
}
