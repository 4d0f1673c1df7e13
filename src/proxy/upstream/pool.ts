/**
 * Idle keep-alive connections per target, most recently used first (LIFO):
 * traffic concentrates on warm sockets and the rest age out, so the pool
 * shrinks by itself after a burst. One unref'd sweep timer per pool replaces
 * a timer per socket.
 */

export interface Pooled {
  readonly key: string;
  /** performance.now() when the connection was parked. */
  idleSince: number;
  /** Closes a connection the pool no longer keeps. */
  close(): void;
}

export class IdlePool<T extends Pooled> {
  private readonly byKey = new Map<string, T[]>();
  private size = 0;
  private sweeper: ReturnType<typeof setInterval> | null = null;

  constructor(
    private readonly maxPerKey: number,
    private readonly idleTimeoutMs: number,
  ) {}

  /** The most recently parked connection for key, if any. */
  take(key: string): T | undefined {
    const list = this.byKey.get(key);
    const conn = list?.pop();
    if (conn !== undefined) this.size--;
    return conn;
  }

  /** Parks conn; false when its target already has maxPerKey idle connections. */
  put(conn: T): boolean {
    let list = this.byKey.get(conn.key);
    if (list === undefined) {
      list = [];
      this.byKey.set(conn.key, list);
    }
    if (list.length >= this.maxPerKey) return false;
    conn.idleSince = performance.now();
    list.push(conn);
    this.size++;
    this.startSweeper();
    return true;
  }

  /** Puts back a connection taken but not used, keeping its idle time. */
  restore(conn: T): boolean {
    let list = this.byKey.get(conn.key);
    if (list === undefined) {
      list = [];
      this.byKey.set(conn.key, list);
    }
    if (list.length >= this.maxPerKey) return false;
    list.push(conn);
    this.size++;
    return true;
  }

  /** Drops conn (closed by the backend while idle); a no-op if it is not parked. */
  remove(conn: T): void {
    const list = this.byKey.get(conn.key);
    const i = list === undefined ? -1 : list.indexOf(conn);
    if (i < 0) return;
    list?.splice(i, 1);
    this.size--;
  }

  get idleCount(): number {
    return this.size;
  }

  /** Closes every connection idle for longer than idleTimeoutMs (the oldest sit at the front). */
  sweep(now: number): void {
    for (const [key, list] of this.byKey) {
      let n = 0;
      while (n < list.length && now - (list[n] as T).idleSince >= this.idleTimeoutMs) n++;
      if (n > 0) this.evict(list, n);
      if (list.length === 0) this.byKey.delete(key);
    }
    if (this.size === 0) this.stopSweeper();
  }

  closeAll(): void {
    for (const list of this.byKey.values()) this.evict(list, list.length);
    this.byKey.clear();
    this.stopSweeper();
  }

  private evict(list: T[], n: number): void {
    const gone = list.splice(0, n);
    this.size -= n;
    for (const conn of gone) conn.close();
  }

  private startSweeper(): void {
    if (this.sweeper !== null) return;
    // Expiry is up to one period late; a period of half the timeout (1 s at
    // most) is precise enough and cheap.
    const period = Math.min(1000, Math.max(10, this.idleTimeoutMs / 2));
    this.sweeper = setInterval(sweepPool, period, this);
    this.sweeper.unref();
  }

  private stopSweeper(): void {
    if (this.sweeper === null) return;
    clearInterval(this.sweeper);
    this.sweeper = null;
  }
}

function sweepPool(pool: IdlePool<Pooled>): void {
  pool.sweep(performance.now());
}
