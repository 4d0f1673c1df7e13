/**
 * Operator states with a drain deadline. A backend drained with a deadline
 * keeps its sessions until then and is in maintenance after it: its remaining
 * sessions move (once: they are re-pinned where they land) and its open
 * WebSockets are closed with 1001 (going away). The deadline is an absolute
 * time, so every worker, every instance (Redis) and a restarted process
 * (snapshot) reach the same state at the same moment without telling one
 * another; each thread arms its own timer.
 */
import type { BackendState } from "../config/schema.ts";

export interface OperatorState {
  state: BackendState;
  /** "drain" only: when it becomes "maint" (ms since the epoch); 0 = no deadline. */
  until: number;
}

/** The state in force at `nowMs`: a drain past its deadline is maintenance. */
export function effectiveState(s: OperatorState, nowMs: number): BackendState {
  return s.state === "drain" && s.until > 0 && nowMs >= s.until ? "maint" : s.state;
}

/** A state as one string (Redis values): "drain@1767225600000" for a drain with a deadline. */
export function formatState(s: OperatorState): string {
  return s.state === "drain" && s.until > 0 ? `drain@${s.until}` : s.state;
}

const STATES: ReadonlySet<string> = new Set<BackendState>(["ready", "drain", "maint"]);

/** The inverse of formatState; null for anything else. */
export function parseState(text: unknown): OperatorState | null {
  if (typeof text !== "string") return null;
  if (STATES.has(text)) return { state: text as BackendState, until: 0 };
  const m = /^drain@([1-9]\d{0,15})$/.exec(text);
  return m ? { state: "drain", until: Number(m[1]) } : null;
}

/** A deadline as carried in messages and snapshots: a positive safe integer, else none. */
export function validUntil(x: unknown): number {
  return typeof x === "number" && Number.isSafeInteger(x) && x > 0 ? x : 0;
}

/** setTimeout's delay is a signed 32-bit number: a longer one would fire at once. */
const MAX_DELAY_MS = 2 ** 31 - 1;

/**
 * One timer per backend with a deadline, keyed "pool\0id". A timer re-arms
 * itself in steps for deadlines more than ~24 days away.
 */
export class DrainTimers {
  private readonly timers = new Map<string, ReturnType<typeof setTimeout>>();

  constructor(private readonly fire: (key: string) => void) {}

  /** Arms (or re-arms) the timer for `key`; until 0 clears it. */
  set(key: string, until: number, nowMs = Date.now()): void {
    this.clear(key);
    if (until <= 0) return;
    const delay = Math.max(0, until - nowMs);
    const timer = setTimeout(
      () => {
        this.timers.delete(key);
        if (Date.now() < until) this.set(key, until);
        else this.fire(key);
      },
      Math.min(delay, MAX_DELAY_MS),
    );
    timer.unref?.();
    this.timers.set(key, timer);
  }

  clear(key: string): void {
    const t = this.timers.get(key);
    if (t !== undefined) clearTimeout(t);
    this.timers.delete(key);
  }

  clearAll(): void {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }
}
