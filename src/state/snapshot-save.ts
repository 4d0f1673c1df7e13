/**
 * Saving a snapshot without holding the serving thread. With "workers": 0 the
 * thread that saves is the one that answers requests, and a table of a million
 * entries takes far longer to read and encode than a request may wait. So the
 * entries are read and msgpack-encoded a slice at a time, yielding to the event
 * loop between slices, and the file is written, fsynced and renamed through
 * node:fs/promises, whose calls Bun runs off this thread.
 *
 * The bytes are the document writeSnapshot writes: the map and array headers
 * around the entries are written here, each slice of entries is encoded by the
 * shared Encoder and its own array header dropped. readSnapshot reads both.
 */
import { open, rename, rm } from "node:fs/promises";
import type { Runtime } from "../contracts.ts";
import type { StickTable } from "../persistence/stick-table.ts";
import type { OperatorState } from "../pool/drain.ts";
import { encoder } from "./codec.ts";
import { dynamicBackends, listStates, SNAPSHOT_VERSION } from "./snapshot.ts";

export interface SaveOptions {
  /** Entries read and encoded between two yields (default 2048: well under a millisecond here). */
  sliceEntries?: number;
  /** Hands the thread back to the event loop between slices (default: one setImmediate turn). */
  yieldToLoop?: () => Promise<void>;
  nowMs?: number;
}

export interface SaveResult {
  entries: number;
  bytes: number;
  /** Slices of entries, each followed by a yield. */
  slices: number;
  /** The longest stretch of snapshot work between two yields, in wall time. */
  longestSliceMs: number;
  /**
   * Slices that took over 5 ms of wall time. A slice's own work is well under
   * that; the long ones are mostly a collection, or another process on the core.
   */
  slicesOver5Ms: number;
}

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * Writes a snapshot of the runtime's tables and the operator states to `file`
 * (temp file, fsync, rename; mode 0600). The tables keep serving while it runs:
 * an entry touched after it was read moves to the end of its table and may be
 * read a second time; loading keeps the later copy, which is the newer one.
 */
export async function saveSnapshot(
  file: string,
  runtime: Runtime,
  operatorStates: ReadonlyMap<string, OperatorState>,
  opts: SaveOptions = {},
): Promise<SaveResult> {
  const sliceEntries = opts.sliceEntries ?? 2048;
  const yieldToLoop = opts.yieldToLoop ?? nextTurn;
  const nowMs = opts.nowMs ?? Date.now();
  const nowSec = Math.floor(nowMs / 1000);
  const result: SaveResult = { entries: 0, bytes: 0, slices: 0, longestSliceMs: 0, slicesOver5Ms: 0 };

  const tables: { pool: string; name: string; table: StickTable }[] = [];
  for (const pool of runtime.pools.values())
    for (const [name, table] of pool.chain.tables) tables.push({ pool: pool.name, name, table });

  const chunks: Uint8Array[] = [
    mapHeader(5),
    encoder.encode("v"),
    encoder.encode(SNAPSHOT_VERSION),
    encoder.encode("savedAt"),
    encoder.encode(nowMs),
    encoder.encode("tables"),
    arrayHeader(tables.length),
  ];
  // One array for every slice: less garbage, so fewer collections during the save.
  const flat: (number | string)[] = [];
  for (const { pool, name, table } of tables) {
    const body: Uint8Array[] = [];
    let count = 0;
    const it = table.entries(nowSec);
    let done = false;
    while (!done) {
      const started = performance.now();
      flat.length = 0;
      while (flat.length < sliceEntries * 3) {
        const next = it.next();
        if (next.done) {
          done = true;
          break;
        }
        flat.push(next.value[0], next.value[1], next.value[2]);
      }
      if (flat.length > 0) {
        body.push(encoder.encode(flat).subarray(headerLength(flat.length)));
        count += flat.length / 3;
      }
      const sliceMs = performance.now() - started;
      result.longestSliceMs = Math.max(result.longestSliceMs, sliceMs);
      if (sliceMs > 5) result.slicesOver5Ms++;
      result.slices++;
      await yieldToLoop();
    }
    result.entries += count;
    chunks.push(
      mapHeader(4),
      encoder.encode("pool"),
      encoder.encode(pool),
      encoder.encode("table"),
      encoder.encode(name),
      encoder.encode("fingerprint"),
      encoder.encode(table.fingerprint),
      encoder.encode("entries"),
      arrayHeader(count * 3),
    );
    // Not a spread: a 50M-entry table is some 25,000 chunks, too many arguments for one call.
    for (const b of body) chunks.push(b);
  }
  chunks.push(encoder.encode("states"), encoder.encode(listStates(operatorStates)));
  chunks.push(encoder.encode("backends"), encoder.encode(dynamicBackends(runtime)));

  result.bytes = await writeChunks(file, chunks);
  return result;
}

/** Temp file, fsync, rename: a crash at any point leaves the previous snapshot whole. */
async function writeChunks(file: string, chunks: Uint8Array[]): Promise<number> {
  const tmp = `${file}.tmp-${process.pid}`;
  let bytes = 0;
  try {
    const handle = await open(tmp, "w", 0o600);
    try {
      for (const chunk of chunks) {
        let off = 0;
        while (off < chunk.length) off += (await handle.write(chunk, off, chunk.length - off)).bytesWritten;
        bytes += chunk.length;
      }
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, file);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
  return bytes;
}

// msgpack headers as @msgpack/msgpack's Encoder writes them (the shortest form),
// so a sliced save is byte for byte what one encode() of the whole snapshot gives.
// https://github.com/msgpack/msgpack/blob/master/spec.md#map-format-family
function mapHeader(size: number): Uint8Array {
  if (size < 16) return Uint8Array.of(0x80 | size);
  return sized(size, 0xde, 0xdf);
}

// https://github.com/msgpack/msgpack/blob/master/spec.md#array-format-family
function arrayHeader(length: number): Uint8Array {
  if (length < 16) return Uint8Array.of(0x90 | length);
  return sized(length, 0xdc, 0xdd);
}

function headerLength(n: number): number {
  return n < 16 ? 1 : n < 0x10000 ? 3 : 5;
}

function sized(n: number, tag16: number, tag32: number): Uint8Array {
  if (n < 0x10000) return Uint8Array.of(tag16, n >> 8, n & 0xff);
  const out = new Uint8Array(5);
  out[0] = tag32;
  new DataView(out.buffer).setUint32(1, n);
  return out;
}
