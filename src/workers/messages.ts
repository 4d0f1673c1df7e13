/**
 * Messages between the primary thread and worker threads, msgpack-encoded
 * with one reused Encoder and Decoder per thread. Every message carries the
 * protocol version `v`; a thread drops messages of another version.
 */
import type { BackendState } from "../config/schema.ts";
import { decoder, encoder } from "../state/codec.ts";
import type { SnapshotTable } from "../state/snapshot.ts";

export const PROTOCOL_VERSION = 1;

/** Learned entries, flattened: pool, table, key, backendId, expiresAtSec, repeated. */
export type LearnedBatch = (string | number)[];

export interface MetricDeltas {
  /** Counter family name → [labels, increment][] */
  counters: Record<string, [Record<string, string>, number][]>;
  /** Histogram name → [labels, bucket increments, sum, count][] */
  histograms: Record<string, [Record<string, string>, number[], number, number][]>;
  /** pool → backend → [requests, errors, lastPinnedAt] */
  backends: [string, string, number, number, number][];
  /** Session-key hashes seen, per pool/backend, for the active-session estimate. */
  sessions: [string, string, number[]][];
}

export type Message =
  | {
      v: number;
      t: "init";
      id: number;
      /** The primary's own resolved config (encodeConfig): a worker never reads the file. */
      config: Uint8Array;
      ports: Record<string, number>;
      keys: Uint8Array[];
      states: [string, string, BackendState][];
      /** pool, backend, down by active checks, down by passive checks until (ms since the epoch; 0: not). */
      health: [string, string, boolean, number][];
      tables: SnapshotTable[];
    }
  | { v: number; t: "ready"; ports: Record<string, number> }
  | { v: number; t: "learn"; e: LearnedBatch }
  | { v: number; t: "state"; pool: string; backend: string; state: BackendState }
  /** An active health check change, from the primary. */
  | { v: number; t: "health"; pool: string; backend: string; down: boolean }
  /**
   * A passive verdict: the backend is down until untilMs. A worker sends the
   * verdict it reached; the primary relays the verdicts it announced.
   */
  | { v: number; t: "passive"; pool: string; backend: string; untilMs: number; reason: string }
  | { v: number; t: "metrics"; d: MetricDeltas }
  /** A reload, first half: open what the config needs, change nothing yet. */
  | { v: number; t: "prepare"; config: Uint8Array; ports: Record<string, number> }
  | { v: number; t: "prepared"; ok: boolean; error?: string }
  /** A reload, second half: every thread prepared (commit), or one could not (abort). */
  | { v: number; t: "commit" }
  | { v: number; t: "abort" }
  | { v: number; t: "stop"; graceMs: number }
  | { v: number; t: "stopped" }
  /** An audit event seen in a worker; the primary owns the audit file. */
  | { v: number; t: "audit"; event: string; fields: Record<string, unknown> };

export function encode(m: Message): Uint8Array {
  return encoder.encode(m);
}

/** Decodes a message; null for anything malformed or of another protocol version. */
export function decode(bytes: unknown): Message | null {
  if (!(bytes instanceof Uint8Array)) return null;
  try {
    const m = decoder.decode(bytes) as Partial<Message>;
    if (typeof m !== "object" || m === null || m.v !== PROTOCOL_VERSION || typeof m.t !== "string")
      return null;
    return m as Message;
  } catch {
    return null;
  }
}

/**
 * Collects learned entries and flushes them as one message at most every
 * `maxDelayMs` or every `maxEntries` entries, whichever comes first.
 */
export class LearnBatcher {
  private batch: LearnedBatch = [];
  private timer: ReturnType<typeof setTimeout> | null = null;

  constructor(
    private readonly send: (bytes: Uint8Array) => void,
    private readonly maxDelayMs = 2,
    private readonly maxEntries = 512,
  ) {}

  add(pool: string, table: string, key: number, backendId: string, expiresAtSec: number): void {
    this.batch.push(pool, table, key, backendId, expiresAtSec);
    if (this.batch.length >= this.maxEntries * 5) this.flush();
    else if (!this.timer) this.timer = setTimeout(() => this.flush(), this.maxDelayMs);
  }

  flush(): void {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.batch.length === 0) return;
    const e = this.batch;
    this.batch = [];
    this.send(encode({ v: PROTOCOL_VERSION, t: "learn", e }));
  }
}

/** Walks a learned batch. */
export function* learnedEntries(e: LearnedBatch): Generator<[string, string, number, string, number]> {
  for (let i = 0; i + 4 < e.length; i += 5) {
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
