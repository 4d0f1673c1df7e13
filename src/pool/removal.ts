/**
 * When a backend being removed may leave its pool. It drains first (keeps
 * the sessions pinned to it, takes no new ones) so requests and WebSockets
 * in flight finish; it leaves once nothing is in flight, or when the pool's
 * removeAfterMs has passed, whichever comes first. Pure: the caller brings
 * the clock and the load.
 */
export interface RemovalFacts {
  now: number;
  /** When the drain began (ms since the epoch). */
  since: number;
  /** Requests in flight plus WebSockets open, as this thread last knew them. */
  load: number;
  removeAfterMs: number;
  /**
   * How stale the load may be: a primary learns its workers' load once a
   * second, so a zero it saw before a full report since the drain began
   * may hide a request that started just before. 0 in a single thread.
   */
  settleMs: number;
}

export type RemovalVerdict = "wait" | "idle" | "deadline";

export function removalVerdict(f: RemovalFacts): RemovalVerdict {
  const elapsed = f.now - f.since;
  if (elapsed >= f.removeAfterMs) return "deadline";
  if (f.load <= 0 && elapsed >= f.settleMs) return "idle";
  return "wait";
}
