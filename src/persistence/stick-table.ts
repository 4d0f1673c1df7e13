/**
 * A bounded table of learned sessions: keyed hash of a session ID → backend.
 *
 * Keys are a keyed hash (HMAC-SHA256, first 48 bits) of the ID, never the ID
 * itself, so a memory dump, snapshot or Redis copy cannot be replayed to
 * hijack a session. Fixed-size number keys and number values also keep an
 * entry small: Map<number, number> costs ~70 bytes an entry.
 *
 * The value packs expiry (seconds) and a slot of the interned backend ids:
 * expirySec * 2^20 + slot (exact below 2^53 until the year 2106). A slot is
 * counted by the entries naming it and freed for another backend when the
 * last one goes, so backends that come and go (pod IPs, DNS) never run out
 * of slots or share one. Map order is insertion order, so touching an entry
 * (delete + set) keeps the least recently used first for eviction.
 */
const MAX_BACKENDS = 2 ** 20;
/**
 * Keys just looked up elsewhere (Redis) and not found are not asked for again
 * for this long, and at most this many are remembered: a session ID a client
 * repeats costs one lookup, not one per request. An entry another instance
 * learns meanwhile still arrives by publication.
 */
const MISS_TTL_SEC = 10;
const MAX_MISSES = 4096;

export interface StickEntry {
  backendId: string;
  expiresAtSec: number;
}

/** Called for every locally learned entry, so other threads, the snapshot and Redis can share it. */
export type LearnHook = (key: number, backendId: string, expiresAtSec: number) => void;

export class StickTable {
  private readonly map = new Map<number, number>();
  /** Slot → backend id ("" when free). */
  private readonly ids: string[] = [];
  /** Slot → entries naming it. */
  private readonly refs: number[] = [];
  private readonly freeSlots: number[] = [];
  private readonly index = new Map<string, number>();
  /** Recent misses elsewhere: key → the second it may be looked up again. Oldest first. */
  private readonly misses = new Map<number, number>();
  /** Set by the state hub when entries must leave this thread. */
  onLearn: LearnHook | null = null;
  /**
   * Entries are written to and looked up in Redis. False for a "stick" table
   * without "share": keys a client chose stay in this instance (its worker
   * threads and snapshot) unless the rule asks otherwise.
   */
  clusterShared = true;
  /** Identifies the secret without revealing it: entries saved under another secret are useless. */
  readonly fingerprint: string;
  private readonly lifeSec: number;

  constructor(
    private readonly secret: Buffer,
    readonly expireMs: number,
    readonly maxEntries: number,
  ) {
    this.fingerprint = new Bun.CryptoHasher("sha256")
      .update("tether table\0")
      .update(secret)
      .digest("hex")
      .slice(0, 16);
    this.lifeSec = Math.ceil(expireMs / 1000);
  }

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
      this.remove(key, v);
      return null;
    }
    const backendId = this.ids[v % MAX_BACKENDS] as string;
    const lifeSec = this.lifeSec;
    const renewed = this.put(key, backendId, nowSec + lifeSec);
    // Other copies of the table expire on their own clocks: re-announce a busy entry once a
    // quarter of its life has passed, so a long session never expires elsewhere.
    if (this.onLearn && expiresAtSec - nowSec < lifeSec * 0.75) this.onLearn(key, backendId, renewed);
    return { backendId, expiresAtSec: renewed };
  }

  set(sessionId: string, backendId: string, nowSec: number): void {
    const key = this.keyOf(sessionId);
    const expiresAtSec = this.put(key, backendId, nowSec + this.lifeSec);
    this.onLearn?.(key, backendId, expiresAtSec);
  }

  /**
   * Applies an entry learned elsewhere (another thread, a snapshot, Redis);
   * expired ones are skipped. Its expiry is bounded by this table's own life
   * from now: whole seconds, never later than a local entry would live, so
   * the packed value stays an exact integer and the entry names the backend
   * it was sent with.
   */
  putHashed(key: number, backendId: string, expiresAtSec: number, nowSec: number): void {
    if (!Number.isFinite(expiresAtSec)) return;
    const bounded = Math.min(Math.floor(expiresAtSec), nowSec + this.lifeSec);
    if (bounded > nowSec) this.put(key, backendId, bounded);
  }

  /** The backend of a hashed key, without touching recency (Redis lookups, tests). */
  peekHashed(key: number, nowSec: number): StickEntry | null {
    const v = this.map.get(key);
    if (v === undefined) return null;
    const expiresAtSec = Math.floor(v / MAX_BACKENDS);
    if (expiresAtSec <= nowSec) return null;
    return { backendId: this.ids[v % MAX_BACKENDS] as string, expiresAtSec };
  }

  /** Records that a lookup elsewhere found no entry for `key`. */
  noteMiss(key: number, nowSec: number): void {
    this.misses.delete(key);
    this.misses.set(key, nowSec + MISS_TTL_SEC);
    if (this.misses.size > MAX_MISSES) {
      const oldest = this.misses.keys().next();
      if (!oldest.done) this.misses.delete(oldest.value);
    }
  }

  /** True while a recent lookup elsewhere for `key` found nothing. */
  missedRecently(key: number, nowSec: number): boolean {
    const until = this.misses.get(key);
    if (until === undefined) return false;
    if (until > nowSec) return true;
    this.misses.delete(key);
    return false;
  }

  /** Live entries, least recently used first: [key, backendId, expiresAtSec]. */
  *entries(nowSec: number): Generator<[number, string, number]> {
    for (const [key, v] of this.map) {
      const expiresAtSec = Math.floor(v / MAX_BACKENDS);
      if (expiresAtSec > nowSec) yield [key, this.ids[v % MAX_BACKENDS] as string, expiresAtSec];
    }
  }

  /** Stores an entry as most recently used; returns its expiry. */
  private put(key: number, backendId: string, expiresAtSec: number): number {
    const slot = this.slotFor(backendId);
    // Every slot in use: a million backends named at once. The entry is not kept rather than misnamed.
    if (slot === -1) return expiresAtSec;
    const old = this.map.get(key);
    if (old !== undefined) this.remove(key, old);
    this.map.set(key, expiresAtSec * MAX_BACKENDS + slot);
    if (this.misses.size > 0) this.misses.delete(key);
    if (this.map.size > this.maxEntries) {
      const oldest = this.map.entries().next();
      if (!oldest.done) this.remove(oldest.value[0], oldest.value[1]);
    }
    return expiresAtSec;
  }

  /** The slot naming `backendId`, counted for one more entry; -1 when none is free. */
  private slotFor(backendId: string): number {
    let slot = this.index.get(backendId);
    if (slot === undefined) {
      slot = this.freeSlots.pop() ?? this.ids.length;
      if (slot >= MAX_BACKENDS) return -1;
      this.ids[slot] = backendId;
      this.refs[slot] = 0;
      this.index.set(backendId, slot);
    }
    this.refs[slot] = (this.refs[slot] as number) + 1;
    return slot;
  }

  /** Deletes an entry, freeing its backend's slot when no other entry names it. */
  private remove(key: number, value: number): void {
    this.map.delete(key);
    const slot = value % MAX_BACKENDS;
    const left = (this.refs[slot] as number) - 1;
    this.refs[slot] = left;
    if (left > 0) return;
    this.index.delete(this.ids[slot] as string);
    this.ids[slot] = "";
    this.freeSlots.push(slot);
  }
}
