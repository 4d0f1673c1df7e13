/**
 * Learned stick-table entries on their way out of a thread or an instance:
 * collected into one flat batch and handed to a sender at most every
 * `maxDelayMs` or every `maxEntries` entries, whichever comes first. Worker
 * threads send batches to the primary as messages; cluster sync writes them
 * to Redis and publishes them to the other instances.
 */

/** Learned entries, flattened: pool, table, key, backendId, expiresAtSec, repeated. */
export type LearnedBatch = (string | number)[];

/** Fields per entry in a LearnedBatch. */
export const LEARNED_FIELDS = 5;

export interface LearnBatcherOptions {
  /**
   * The longest an entry waits before its batch is sent, in ms; default 2. 0:
   * sent once the current task's synchronous work is done (a microtask), so
   * the entries learned while answering a response leave before that
   * response reaches the client.
   */
  maxDelayMs?: number;
  /** A batch is sent as soon as it holds this many entries. Must be >= 1; default 512. */
  maxEntries?: number;
}

/**
 * Collects learned entries and passes each full or timed-out batch to `send`.
 * `flush()` returns what `send` returned (undefined when nothing was queued),
 * so a sender that writes asynchronously can be awaited on shutdown.
 */
export class LearnBatcher<R = void> {
  private batch: LearnedBatch = [];
  private timer: ReturnType<typeof setTimeout> | null = null;
  private queued = false;
  private readonly maxDelayMs: number;
  private readonly maxFields: number;

  constructor(
    private readonly send: (batch: LearnedBatch) => R,
    opts: LearnBatcherOptions = {},
  ) {
    const { maxDelayMs = 2, maxEntries = 512 } = opts;
    if (!(maxDelayMs >= 0)) throw new Error("LearnBatcher maxDelayMs: must be 0 or more");
    if (!(Number.isInteger(maxEntries) && maxEntries >= 1))
      throw new Error("LearnBatcher maxEntries: must be a whole number >= 1");
    this.maxDelayMs = maxDelayMs;
    this.maxFields = maxEntries * LEARNED_FIELDS;
  }

  add(pool: string, table: string, key: number, backendId: string, expiresAtSec: number): void {
    this.batch.push(pool, table, key, backendId, expiresAtSec);
    if (this.batch.length >= this.maxFields) this.flush();
    else if (this.maxDelayMs === 0) {
      if (!this.queued) {
        this.queued = true;
        queueMicrotask(this.flushQueued);
      }
    } else if (!this.timer) this.timer = setTimeout(() => this.flush(), this.maxDelayMs);
  }

  private readonly flushQueued = () => {
    this.queued = false;
    this.flush();
  };

  /** Sends what is queued now; call it on stop, or the last entries wait for a timer that may not fire. */
  flush(): R | undefined {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.batch.length === 0) return undefined;
    const e = this.batch;
    this.batch = [];
    return this.send(e);
  }
}

/** Walks a learned batch, skipping entries whose fields are not of the expected types. */
export function* learnedEntries(e: LearnedBatch): Generator<[string, string, number, string, number]> {
  for (let i = 0; i + LEARNED_FIELDS - 1 < e.length; i += LEARNED_FIELDS) {
    const [pool, table, key, backendId, exp] = [e[i], e[i + 1], e[i + 2], e[i + 3], e[i + 4]];
    if (
      typeof pool === "string" &&
      typeof table === "string" &&
      typeof key === "number" &&
      typeof backendId === "string" &&
      typeof exp === "number"
    ) {
      yield [pool, table, key, backendId, exp];
    }
  }
}
