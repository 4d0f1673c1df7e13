/**
 * The audit log: one JSON object per session event, with an "event" field
 * (session.created, session.repinned, session.expired, session.split, persistence.rejected,
 * backend.state, and membership: backend.added, backend.updated,
 * backend.removing, backend.removed). Written to the file named by "audit", or stdout. Callers
 * pass ids, addresses and reasons only: never a cookie value, a key or a full
 * query string.
 */
import { appendFileSync, openSync } from "node:fs";

export type AuditEvent =
  | "session.created"
  | "session.repinned"
  | "session.expired"
  /** failover "strict": a session was answered 503 rather than moved off its unavailable backend. */
  | "session.held"
  /** A route's traffic split gave a new session a pool, by weight. */
  | "session.split"
  | "persistence.rejected"
  | "backend.state"
  | "backend.added"
  | "backend.updated"
  | "backend.removing"
  | "backend.removed";

export interface Audit {
  emit(event: AuditEvent, fields: Record<string, unknown>): void;
}

export const noAudit: Audit = { emit() {} };

export function createAudit(target: string | undefined, write?: (line: string) => void): Audit {
  if (!target && !write) return noAudit;
  let sink = write;
  if (!sink) {
    if (target === "stdout") sink = (line) => process.stdout.write(line);
    else {
      // Opened once with 0600: the audit log names clients and their sessions' backends.
      const fd = openSync(target as string, "a", 0o600);
      sink = (line) => appendFileSync(fd, line);
    }
  }
  const out = sink;
  return {
    emit(event, fields) {
      out(`${JSON.stringify({ time: new Date().toISOString(), event, ...fields })}\n`);
    },
  };
}
