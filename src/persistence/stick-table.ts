/**
 * A bounded table of learned sessions: keyed hash of a session ID → backend.
 *
 * Keys are a keyed hash (HMAC-SHA256, first 48 bits) of the ID, never the ID
 * itself, so a memory dump, snapshot or Redis copy cannot be replayed to
 * hijack a session. Fixed-size number keys and number values also keep an
 * entry small: Map<number, number> costs ~70 bytes an entry.
 *
 * The value packs expiry (seconds) and an index into the interned backend
 * ids: expirySec * 4096 + index. Map order is insertion order, so touching an
 * entry (delete + set) keeps the least recently used first for eviction.
 */
const MAX_BACKENDS = 4096;

export interface StickEntry {
  backendId: string;
  expiresAtSec: number;
}

export class StickTable {
  private readonly map = new Map<number, number>();
  private readonly ids: string[] = [];
  private readonly index = new Map<string, number>();

  constructor(
    private readonly secret: Buffer,
    readonly expireMs: number,
    readonly maxEntries: number,
  ) {}

  /** The table key of a session ID. */
  keyOf(sessionId: string): number {
    // Bun.CryptoHasher's HMAC costs a third of node:crypto's createHmac per call here.
    const mac = new Bun.CryptoHasher("sha256", this.secret).update(sessionId).digest();
    return mac.readUIntBE(0, 6);
  }

  get size(): number {
    return this.map.size;
  }

  /** The live entry for a session ID, refreshed as most recently used. */
  get(sessionId: string, nowSec: number): StickEntry | null {
    const key = this.keyOf(sessionId);
    const v = this.map.get(key);
    if (v === undefined) return null;
    const expiresAtSec = Math.floor(v / MAX_BACKENDS);
    if (expiresAtSec <= nowSec) {
      this.map.delete(key);
      return null;
    }
    const backendId = this.ids[v % MAX_BACKENDS] as string;
    this.put(key, backendId, nowSec);
    return { backendId, expiresAtSec: nowSec + Math.ceil(this.expireMs / 1000) };
  }

  set(sessionId: string, backendId: string, nowSec: number): void {
    this.put(this.keyOf(sessionId), backendId, nowSec);
  }

  private put(key: number, backendId: string, nowSec: number): void {
    let i = this.index.get(backendId);
    if (i === undefined) {
      i = this.ids.length % MAX_BACKENDS;
      this.ids[i] = backendId;
      this.index.set(backendId, i);
    }
    this.map.delete(key);
    this.map.set(key, (nowSec + Math.ceil(this.expireMs / 1000)) * MAX_BACKENDS + i);
    if (this.map.size > this.maxEntries) {
      const oldest = this.map.keys().next();
      if (!oldest.done) this.map.delete(oldest.value);
    }
  }
}
