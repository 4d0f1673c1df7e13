/**
 * tls-session: for TLS passthrough listeners. A ClientHello that offers a
 * non-empty legacy session ID is looked up in the stick table, which learns
 * session IDs from backends' ServerHellos (TLS 1.2 and below: a ServerHello
 * echoing the client's ID is a resumption; a new ID is stored against the
 * backend that issued it). TLS 1.3 clients send a random ID every time, so
 * they never hit and fall through to the next rule.
 */
import type { StickTable } from "./stick-table.ts";
import type { Decision, RequestFacts, Rule } from "./types.ts";

export class TlsSessionRule implements Rule {
  readonly name = "tls-session" as const;

  constructor(readonly table: StickTable) {}

  decide(req: RequestFacts): Decision {
    const id = req.tlsSessionId;
    if (!id) return { kind: "none", rule: this.name };
    const entry = this.table.get(id, req.nowSec);
    if (!entry) return { kind: "none", rule: this.name };
    return { kind: "pinned", backendId: entry.backendId, key: id, rule: this.name };
  }

  /** The table key this connection would look up, if it offers a session ID. */
  lookupKey(req: RequestFacts): number | null {
    return req.tlsSessionId ? this.table.keyOf(req.tlsSessionId) : null;
  }

  /** Called with the session ID a backend's ServerHello issued or echoed. */
  learnServerHello(sessionId: string, backendId: string, nowSec: number): void {
    if (sessionId) this.table.set(sessionId, backendId, nowSec);
  }
}
