/**
 * A worker's lookup of learned entries other workers of this process hold,
 * through the primary (which applies every worker's learned batches). A
 * client's next request may reach another worker than the one that learned
 * its session; without this it would be placed as new until the batch
 * arrived.
 */
import type { ClusterLookup } from "../contracts.ts";

/**
 * The primary is a thread of this process: it answers in microseconds unless
 * it is busy (a snapshot write). Past this the request is placed as new.
 */
const TIMEOUT_MS = 100;

type Found = { backendId: string; expiresAtSec: number } | null;

export class SiblingLookup implements ClusterLookup {
  private nextId = 1;
  private readonly pending = new Map<number, (found: Found) => void>();

  constructor(private readonly ask: (pool: string, table: string, key: number, id: number) => void) {}

  lookup(pool: string, table: string, key: number): Promise<Found> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.settle(id, null), TIMEOUT_MS);
      this.pending.set(id, (found) => {
        clearTimeout(timer);
        resolve(found);
      });
      this.ask(pool, table, key, id);
    });
  }

  /** The primary's answer; "" names no backend. Unknown ids (timed out) are ignored. */
  answer(id: number, backendId: string, expiresAtSec: number): void {
    this.settle(id, backendId === "" ? null : { backendId, expiresAtSec });
  }

  private settle(id: number, found: Found): void {
    const resolve = this.pending.get(id);
    if (!resolve) return;
    this.pending.delete(id);
    resolve(found);
  }
}

/** Asks `first`, then `second` on a miss: this process's workers, then other instances (Redis). */
export function chainLookups(first: ClusterLookup, second: ClusterLookup | null): ClusterLookup {
  if (!second) return first;
  return {
    lookup: async (pool, table, key) =>
      (await first.lookup(pool, table, key)) ?? (await second.lookup(pool, table, key)),
  };
}
