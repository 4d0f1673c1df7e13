/**
 * Messages between the primary thread and worker threads, msgpack-encoded
 * with one reused Encoder and Decoder per thread. Every message carries the
 * protocol version `v`; a thread drops messages of another version.
 */
import type { BackendState } from "../config/schema.ts";
import { decoder, encoder } from "../state/codec.ts";
import type { LearnedBatch } from "../state/learn-batch.ts";
import type { SnapshotTable } from "../state/snapshot.ts";

export const PROTOCOL_VERSION = 1;

export interface MetricDeltas {
  /** Counter family name → [labels, increment][] */
  counters: Record<string, [Record<string, string>, number][]>;
  /** Histogram name → [labels, bucket increments, sum, count][] */
  histograms: Record<string, [Record<string, string>, number[], number, number][]>;
  /** pool → backend → [requests, errors, lastPinnedAt] */
  backends: [string, string, number, number, number][];
  /** Session-key hashes seen, per pool/backend, for the active-session estimate. */
  sessions: [string, string, number[]][];
  /** This worker's load now, per pool/backend whose load changed: [pool, id, inflight, websockets]. */
  load: [string, string, number, number][];
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
      /** pool, backend, state, a drain's deadline (ms since the epoch; 0: none). */
      states: [string, string, BackendState, number][];
      /** pool, backend, down by active checks, down by passive checks until (ms since the epoch; 0: not). */
      health: [string, string, boolean, number][];
      tables: SnapshotTable[];
    }
  | { v: number; t: "ready"; ports: Record<string, number> }
  | { v: number; t: "learn"; e: LearnedBatch }
  /** A worker's local miss, asked of the primary, which holds what every worker learned. */
  | { v: number; t: "lookup"; id: number; pool: string; table: string; key: number }
  /** The primary's answer to a lookup (backendId "" : none). */
  | { v: number; t: "found"; id: number; backendId: string; exp: number }
  /** until: a drain's deadline (ms since the epoch; 0: none). */
  | { v: number; t: "state"; pool: string; backend: string; state: BackendState; until: number }
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
