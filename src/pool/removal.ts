/**
 * When a backend being removed may leave its pool. It drains first (keeps
 * the sessions pinned to it, takes no new ones) so requests and WebSockets
 * in flight finish; it leaves once nothing is in flight, or at its drain
 * deadline, whichever comes first. The deadline is the pool's
 * drainDeadlineMs from the moment the removal began (REMOVAL_DEADLINE_MS
 * when the pool sets none); at it, every thread closes the backend's
 * remaining WebSockets with 1001, as at any drain's deadline (drain.ts).
 * Pure: the caller brings the clock and the load.
 */

/** The drain deadline of a removal in a pool without drainDeadlineMs. */
export const REMOVAL_DEADLINE_MS = 30_000;

/** How long a backend being removed from a pool drains at most (the pool's drainDeadlineMs: 0 = none). */
export function removalDeadlineMs(drainDeadlineMs: number | undefined): number {
  return drainDeadlineMs && drainDeadlineMs > 0 ? drainDeadlineMs : REMOVAL_DEADLINE_MS;
}

export interface RemovalFacts {
  now: number;
  /** When the drain began (ms since the epoch). */
  since: number;
  /** Its drain deadline (ms since the epoch). */
  until: number;
  /** Requests in flight plus WebSockets open, as this thread last knew them. */
  load: number;
  /**
   * How stale the load may be: a primary learns its workers' load once a
   * second, so a zero it saw before a full report since the drain began
   * may hide a request that started just before. 0 in a single thread.
   */
  settleMs: number;
}

export type RemovalVerdict = "wait" | "idle" | "deadline";

export function removalVerdict(f: RemovalFacts): RemovalVerdict {
  if (f.now >= f.until) return "deadline";
  if (f.load <= 0 && f.now - f.since >= f.settleMs) return "idle";
  return "wait";
}
