/**
 * The snapshot: learned stick-table entries and operator-set backend states,
 * msgpack-encoded, so sessions survive a restart. Written to a temp file,
 * fsynced and renamed (a crash leaves the old snapshot whole), mode 0600. It
 * holds only keyed hashes of session IDs, never the IDs. A corrupt or
 * truncated snapshot is reported and ignored, never fatal.
 */
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from "node:fs";
import type { BackendState } from "../config/schema.ts";
import type { Runtime } from "../contracts.ts";
import type { OperatorState } from "../pool/drain.ts";
import { decoder, encoder } from "./codec.ts";

export const SNAPSHOT_VERSION = 1;

export interface SnapshotTable {
  pool: string;
  table: string;
  /** The table secret's fingerprint: entries under another secret are skipped. */
  fingerprint: string;
  /** Flattened triples: key, backend id, expiresAtSec. */
  entries: (number | string)[];
}

export interface Snapshot {
  v: number;
  savedAt: number;
  tables: SnapshotTable[];
  /** until: a drain's deadline (ms since the epoch), present only when there is one. */
  states: SnapshotState[];
  /** Backends added through the admin API (absent in snapshots written before they existed). */
  backends?: SnapshotBackend[];
}

export interface SnapshotBackend {
  pool: string;
  id: string;
  url: string;
  weight: number;
  /** "api" when absent (snapshots written before DNS discovery). */
  source?: "api" | "dns";
  /** A discovered https backend's server name (config/members.ts). */
  serverName?: string;
}

export interface SnapshotState {
  pool: string;
  backend: string;
  state: BackendState;
  until?: number;
}

/** Operator states as the snapshot (and a worker's init message) lists them. */
export function listStates(operatorStates: ReadonlyMap<string, OperatorState>): SnapshotState[] {
  return [...operatorStates].map(([k, s]) => {
    const [pool = "", backend = ""] = k.split("\0");
    return { pool, backend, state: s.state, ...(s.until > 0 ? { until: s.until } : {}) };
  });
}

export function collectSnapshot(
  runtime: Runtime,
  operatorStates: ReadonlyMap<string, OperatorState>,
  nowMs = Date.now(),
): Snapshot {
  const nowSec = Math.floor(nowMs / 1000);
  const tables: SnapshotTable[] = [];
  for (const pool of runtime.pools.values()) {
    for (const [name, table] of pool.chain.tables) {
      const entries: (number | string)[] = [];
      for (const [key, backendId, expiresAtSec] of table.entries(nowSec))
        entries.push(key, backendId, expiresAtSec);
      tables.push({ pool: pool.name, table: name, fingerprint: table.fingerprint, entries });
    }
  }
  return {
    v: SNAPSHOT_VERSION,
    savedAt: nowMs,
    tables,
    states: listStates(operatorStates),
    backends: dynamicBackends(runtime),
  };
}

/**
 * Backends added while running outlive restarts: API ones until deleted, DNS
 * ones as the last known set until the first answer (so learned sessions
 * naming them load, and DNS trouble at start empties nothing). One being
 * removed is not kept.
 */
export function dynamicBackends(runtime: Runtime): SnapshotBackend[] {
  const backends: SnapshotBackend[] = [];
  for (const pool of runtime.pools.values())
    for (const b of pool.backends)
      if (b.source !== "config" && !b.removing)
        backends.push({
          pool: pool.name,
          id: b.id,
          url: b.url,
          weight: b.weight,
          source: b.source,
          ...(b.source === "dns" && b.target.tls?.serverName ? { serverName: b.target.tls.serverName } : {}),
        });
  return backends;
}

export function writeSnapshot(file: string, snapshot: Snapshot): void {
  const bytes = encoder.encode(snapshot);
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = openSync(tmp, "w", 0o600);
  try {
    let off = 0;
    while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
}

function isSnapshot(x: unknown): x is Snapshot {
  if (typeof x !== "object" || x === null) return false;
  const s = x as Partial<Snapshot>;
  return (
    s.v === SNAPSHOT_VERSION &&
    Array.isArray(s.tables) &&
    Array.isArray(s.states) &&
    typeof s.savedAt === "number"
  );
}

/** Reads a snapshot; a missing file is null, a bad one a problem to report. */
export function readSnapshot(file: string): { snapshot: Snapshot | null; problem?: string } {
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === "ENOENT" ? { snapshot: null } : { snapshot: null, problem: `cannot read (${code})` };
  }
  try {
    const data = decoder.decode(bytes);
    if (!isSnapshot(data)) return { snapshot: null, problem: "not a tether snapshot of this version" };
    return { snapshot: data };
  } catch (e) {
    return { snapshot: null, problem: `corrupt: ${(e as Error).message}` };
  }
}

/** Loads a snapshot's entries into the runtime's tables; returns how many were live. */
export function applySnapshot(runtime: Runtime, snapshot: Snapshot, nowMs = Date.now()): number {
  const nowSec = Math.floor(nowMs / 1000);
  let loaded = 0;
  for (const t of snapshot.tables) {
    const table = runtime.pools.get(t.pool)?.chain.tables.get(t.table);
    if (!table || table.fingerprint !== t.fingerprint || !Array.isArray(t.entries)) continue;
    const pool = runtime.pools.get(t.pool);
    for (let i = 0; i + 2 < t.entries.length; i += 3) {
      const key = t.entries[i];
      const backendId = t.entries[i + 1];
      const expiresAtSec = t.entries[i + 2];
      if (typeof key !== "number" || typeof backendId !== "string" || typeof expiresAtSec !== "number")
        continue;
      if (!pool?.get(backendId) || expiresAtSec <= nowSec) continue;
      table.putHashed(key, backendId, expiresAtSec, nowSec);
      loaded++;
    }
  }
  return loaded;
}
