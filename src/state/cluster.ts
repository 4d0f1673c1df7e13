/**
 * Cluster sync: learned stick-table entries and operator backend states
 * shared between tether instances through Redis, with Bun's RedisClient.
 *
 *   learned entry  SET {prefix}t:{pool}:{table}:{key} = backendId EX <seconds left>
 *   backend state  SET {prefix}s:{pool}:{backend} = state (no TTL)
 *   both           PUBLISH {prefix}events base64(msgpack {v, from, t, ...})
 *
 * Redis is an accelerator, never a dependency: every call has a deadline, the
 * offline queue is off (Bun would otherwise hold commands for a dead server
 * indefinitely), and while Redis is unreachable lookups answer null at once,
 * writes are dropped (states are kept and replayed) and a background loop
 * reconnects. No request waits longer than lookupTimeoutMs or fails because
 * of Redis.
 *
 * Bun's RedisClient, measured (1.4.5): publish() accepts only strings, and a
 * string carrying raw bytes is sent as UTF-8 (0x80 arrives as C2 80), hence
 * base64. With autoReconnect, connect() to a stopped server stays pending
 * until every retry is spent and subscriptions are not restored after a
 * reconnect; a stopped (SIGSTOP) server leaves commands pending forever with
 * `connected` still true. So this class owns reconnection: each attempt makes
 * two fresh clients (commands, and the subscriber, which can run nothing
 * else), subscribes, and a PING watchdog tears down a link that stops answering.
 */

import { RedisClient } from "bun";
import type { BackendState } from "../config/schema.ts";
import type { Logger } from "../log.ts";
import { decoder, encoder } from "./codec.ts";
import { LEARNED_FIELDS, LearnBatcher, type LearnedBatch, learnedEntries } from "./learn-batch.ts";

export const CLUSTER_PROTOCOL_VERSION = 1;

/** Where entries and states learned by other instances are applied. */
export interface ClusterHooks {
  applyLearned(pool: string, table: string, key: number, backendId: string, expiresAtSec: number): void;
  applyState(pool: string, backend: string, state: BackendState): void;
}

export interface ClusterOptions {
  /** redis://host:port (or rediss://, with credentials if any). */
  url: string;
  /** Prefix of every key and of the channel, e.g. "tether:". */
  prefix: string;
  /** A lookup slower than this resolves null: the request is placed as new. */
  lookupTimeoutMs: number;
}

/** Counters for metrics and tests; they only grow. */
export interface ClusterStats {
  lookups: number;
  hits: number;
  lookupTimeouts: number;
  lookupErrors: number;
  /** Learned entries written to Redis (SET issued). */
  published: number;
  /** Learned entries dropped because Redis was unreachable. */
  dropped: number;
  /** Messages from other instances applied / ignored as malformed or foreign. */
  received: number;
  ignored: number;
  reconnects: number;
}

type ClusterMessage =
  | { v: number; from: string; t: "learn"; e: LearnedBatch }
  | { v: number; from: string; t: "state"; pool: string; backend: string; state: BackendState };

/** Bounds the first connection in start(), and every reconnect attempt. */
const CONNECT_TIMEOUT_MS = 1000;
/** Writes, PUBLISH, SCAN: fire-and-forget, but never left pending forever. */
const WRITE_TIMEOUT_MS = 2000;
/** loadStates() as a whole. */
const LOAD_TIMEOUT_MS = 2000;
/** A link whose PING takes longer than this is torn down and rebuilt. */
const PING_INTERVAL_MS = 1000;
const PING_TIMEOUT_MS = 1000;
const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 2000;
/** The same failure is logged at most once per this period, with a count of the suppressed ones. */
const LOG_EVERY_MS = 10_000;
/** A message bigger than this (base64 chars) is not ours: 512 entries take ~40 KB. */
const MAX_MESSAGE_CHARS = 4 * 1024 * 1024;
const MAX_KEY = 2 ** 48;
const STATES: ReadonlySet<string> = new Set<BackendState>(["ready", "drain", "maint"]);

interface Link {
  gen: number;
  /** GET, SET, PUBLISH, SCAN. */
  cmd: RedisClient;
  /** Subscribed to the events channel; Redis allows nothing else on it. */
  sub: RedisClient;
}

export class ClusterSync {
  /** Random per process: messages carrying it are this instance's own echo. */
  readonly instanceId = crypto.randomUUID();
  readonly stats: ClusterStats = {
    lookups: 0,
    hits: 0,
    lookupTimeouts: 0,
    lookupErrors: 0,
    published: 0,
    dropped: 0,
    received: 0,
    ignored: 0,
    reconnects: 0,
  };
  private readonly channel: string;
  private link: Link | null = null;
  private gen = 0;
  private started = false;
  private stopped = false;
  private everConnected = false;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private retryMs = RETRY_MIN_MS;
  private watchdog: ReturnType<typeof setInterval> | null = null;
  private pinging = false;
  /** Learned entries go out every 2 ms or every 512 entries, whichever comes first. */
  private readonly learned = new LearnBatcher((e) => this.writeLearned(e));
  /** States not yet written (Redis was down or the write failed): replayed on reconnect. */
  private readonly unsentStates = new Map<string, [string, string, BackendState]>();
  private readonly lastLogged = new Map<string, { at: number; suppressed: number }>();

  constructor(
    private readonly opts: ClusterOptions,
    private readonly log: Logger,
    private readonly hooks: ClusterHooks,
  ) {
    if (!(opts.lookupTimeoutMs > 0)) throw new Error("cluster.redis.lookupTimeoutMs: must be above 0");
    this.channel = `${opts.prefix}events`;
  }

  /** True while both connections are up and the subscription is in place. */
  get connected(): boolean {
    const l = this.link;
    if (!l) return false;
    return l.cmd.connected && l.sub.connected;
  }

  /**
   * Connects and subscribes, waiting at most ~1 s. Never throws: an
   * unreachable Redis is logged and retried in the background.
   */
  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    this.watchdog = setInterval(() => this.ping(), PING_INTERVAL_MS);
    this.watchdog.unref?.();
    const error = await this.connectOnce();
    if (error === null) {
      this.log.info("cluster: connected to redis", { channel: this.channel, instance: this.instanceId });
      await this.replayStates();
    } else {
      this.log.warn("cluster: redis unreachable; serving from local tables and retrying", {
        error: error.message,
      });
      this.scheduleReconnect();
    }
  }

  /** Queues a learned entry (or re-pin) for Redis and the other instances. Never throws. */
  publishLearned(pool: string, table: string, key: number, backendId: string, expiresAtSec: number): void {
    if (this.stopped) return;
    this.learned.add(pool, table, key, backendId, expiresAtSec);
  }

  /** Writes an operator state and tells the other instances. Never throws; replayed after an outage. */
  publishState(pool: string, backend: string, state: BackendState): void {
    if (this.stopped) return;
    const id = `${pool}\0${backend}`;
    this.unsentStates.set(id, [pool, backend, state]);
    const link = this.link;
    if (!link) return;
    this.sendState(link, pool, backend, state).then(
      () => {
        // A newer state for the same backend may have been queued meanwhile; keep that one.
        if (this.unsentStates.get(id)?.[2] === state) this.unsentStates.delete(id);
      },
      (e) => this.report("state write", e),
    );
  }

  /**
   * The entry another instance learned for this key: null on a miss, an
   * error, no connection, or after lookupTimeoutMs. Never rejects.
   */
  lookup(
    pool: string,
    table: string,
    key: number,
  ): Promise<{ backendId: string; expiresAtSec: number } | null> {
    this.stats.lookups++;
    const link = this.link;
    if (!link) return Promise.resolve(null);
    const k = this.tableKey(pool, table, key);
    return new Promise((resolve) => {
      let done = false;
      const timer = setTimeout(() => {
        if (done) return;
        done = true;
        this.stats.lookupTimeouts++;
        resolve(null);
      }, this.opts.lookupTimeoutMs);
      // Issued in the same tick, the two commands leave in one write (auto-pipelining): one round trip.
      Promise.all([link.cmd.get(k), link.cmd.pttl(k)]).then(
        ([backendId, pttl]) => {
          if (done) return;
          done = true;
          clearTimeout(timer);
          // pttl: -2 the key expired between the two commands, -1 no expiry (not written by tether).
          if (typeof backendId !== "string" || backendId === "" || !(pttl > 0)) return resolve(null);
          this.stats.hits++;
          resolve({ backendId, expiresAtSec: Math.floor((Date.now() + pttl) / 1000) });
        },
        (e) => {
          if (done) return;
          done = true;
          clearTimeout(timer);
          this.stats.lookupErrors++;
          this.report("lookup", e);
          resolve(null);
        },
      );
    });
  }

  /** Every backend state stored in Redis, [pool, backend, state]; [] on failure or without a connection. */
  async loadStates(): Promise<[string, string, BackendState][]> {
    const link = this.link;
    if (!link) return [];
    try {
      return await withTimeout(this.scanStates(link), LOAD_TIMEOUT_MS, "loading states");
    } catch (e) {
      this.report("load states", e);
      return [];
    }
  }

  /** Flushes queued entries (bounded), then closes both connections. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.watchdog) clearInterval(this.watchdog);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.watchdog = this.retryTimer = null;
    const pending = this.learned.flush();
    if (pending) await pending.catch(() => {});
    this.gen++;
    const link = this.link;
    this.link = null;
    if (link) closeLink(link);
  }

  private tableKey(pool: string, table: string, key: number): string {
    return `${this.opts.prefix}t:${pool}:${table}:${key}`;
  }

  private stateKey(pool: string, backend: string): string {
    return `${this.opts.prefix}s:${pool}:${backend}`;
  }

  /** Writes a batch of learned entries; the returned promise settles when Redis answered (or the deadline). */
  private writeLearned(e: LearnedBatch): Promise<void> | null {
    const link = this.link;
    if (!link) {
      this.stats.dropped += e.length / LEARNED_FIELDS;
      return null;
    }
    const nowSec = Math.floor(Date.now() / 1000);
    const writes: Promise<unknown>[] = [];
    for (const [pool, table, key, backendId, expiresAtSec] of learnedEntries(e)) {
      const ttl = expiresAtSec - nowSec;
      if (ttl <= 0) continue;
      writes.push(link.cmd.set(this.tableKey(pool, table, key), backendId, "EX", ttl));
    }
    this.stats.published += writes.length;
    writes.push(
      link.cmd.publish(
        this.channel,
        pack({ v: CLUSTER_PROTOCOL_VERSION, from: this.instanceId, t: "learn", e }),
      ),
    );
    return withTimeout(Promise.all(writes), WRITE_TIMEOUT_MS, "learned write").then(
      () => {},
      (err) => this.report("learned write", err),
    );
  }

  private sendState(link: Link, pool: string, backend: string, state: BackendState): Promise<unknown> {
    const msg = pack({
      v: CLUSTER_PROTOCOL_VERSION,
      from: this.instanceId,
      t: "state",
      pool,
      backend,
      state,
    });
    return withTimeout(
      Promise.all([link.cmd.set(this.stateKey(pool, backend), state), link.cmd.publish(this.channel, msg)]),
      WRITE_TIMEOUT_MS,
      "state write",
    );
  }

  private async scanStates(link: Link): Promise<[string, string, BackendState][]> {
    const head = `${this.opts.prefix}s:`;
    // SCAN's MATCH is a glob: escape the prefix's own glob characters.
    const pattern = `${head.replace(/[*?[\]\\]/g, "\\$&")}*`;
    const keys = new Set<string>();
    let cursor = "0";
    do {
      const [next, batch] = await link.cmd.scan(cursor, "MATCH", pattern, "COUNT", 1000);
      for (const k of batch) keys.add(k);
      cursor = next;
    } while (cursor !== "0");
    const list = [...keys];
    const out: [string, string, BackendState][] = [];
    for (let i = 0; i < list.length; i += 1000) {
      const chunk = list.slice(i, i + 1000);
      const values = await link.cmd.mget(...chunk);
      chunk.forEach((k, j) => {
        const state = values[j];
        // Pool names and backend ids cannot hold ':' (config schema), so the first one splits them.
        const rest = k.slice(head.length);
        const colon = rest.indexOf(":");
        if (colon <= 0 || colon === rest.length - 1 || typeof state !== "string" || !STATES.has(state))
          return;
        out.push([rest.slice(0, colon), rest.slice(colon + 1), state as BackendState]);
      });
    }
    return out;
  }

  /** One connection attempt: null when the link is up and subscribed, else the error. */
  private async connectOnce(): Promise<Error | null> {
    const gen = ++this.gen;
    const options = {
      connectionTimeout: CONNECT_TIMEOUT_MS,
      autoReconnect: false,
      enableOfflineQueue: false,
    };
    const link: Link = {
      gen,
      cmd: new RedisClient(this.opts.url, options),
      sub: new RedisClient(this.opts.url, options),
    };
    const onclose = (e: Error) => this.lost(gen, e);
    link.cmd.onclose = onclose;
    link.sub.onclose = onclose;
    try {
      await withTimeout(
        Promise.all([link.cmd.connect(), link.sub.connect()]).then(() =>
          link.sub.subscribe(this.channel, this.onMessage),
        ),
        CONNECT_TIMEOUT_MS,
        "connecting",
      );
    } catch (e) {
      closeLink(link);
      return e instanceof Error ? e : new Error(String(e));
    }
    if (this.stopped || gen !== this.gen) {
      closeLink(link);
      return new Error("stopped");
    }
    this.link = link;
    this.everConnected = true;
    this.retryMs = RETRY_MIN_MS;
    return null;
  }

  /** A live link dropped (either connection closed, or PING went unanswered). */
  private lost(gen: number, e: Error): void {
    const link = this.link;
    if (!link || link.gen !== gen) return;
    this.link = null;
    closeLink(link);
    if (this.stopped) return;
    this.log.warn("cluster: redis connection lost; serving from local tables and reconnecting", {
      error: e.message,
    });
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.stopped || this.retryTimer) return;
    // Jitter keeps a fleet of instances from reconnecting in lockstep.
    const delay = this.retryMs * (0.75 + Math.random() * 0.5);
    this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
    this.retryTimer = setTimeout(async () => {
      this.retryTimer = null;
      if (this.stopped) return;
      const wasConnected = this.everConnected;
      const error = await this.connectOnce();
      if (error !== null) {
        if (!this.stopped) {
          this.report("reconnect", error);
          this.scheduleReconnect();
        }
        return;
      }
      this.stats.reconnects++;
      this.log.info(wasConnected ? "cluster: reconnected to redis" : "cluster: connected to redis", {
        channel: this.channel,
      });
      await this.resync();
    }, delay);
    this.retryTimer.unref?.();
  }

  /** After an outage: write the states set meanwhile, then pick up the ones others set. */
  private async resync(): Promise<void> {
    if (!(await this.replayStates())) return;
    for (const [pool, backend, state] of await this.loadStates())
      this.apply(() => this.hooks.applyState(pool, backend, state));
  }

  /** Writes the states set while Redis was unreachable; false if one failed (kept for the next time). */
  private async replayStates(): Promise<boolean> {
    const link = this.link;
    if (!link) return false;
    for (const [id, [pool, backend, state]] of [...this.unsentStates]) {
      try {
        await this.sendState(link, pool, backend, state);
        if (this.unsentStates.get(id)?.[2] === state) this.unsentStates.delete(id);
      } catch (e) {
        this.report("state write", e);
        return false;
      }
    }
    return true;
  }

  private async ping(): Promise<void> {
    const link = this.link;
    if (!link || this.pinging) return;
    this.pinging = true;
    try {
      await withTimeout(link.cmd.send("PING", []), PING_TIMEOUT_MS, "ping");
    } catch (e) {
      this.lost(link.gen, e instanceof Error ? e : new Error(String(e)));
    } finally {
      this.pinging = false;
    }
  }

  /** Subscriber callback: anything that is not a valid message from another instance is ignored. */
  private readonly onMessage = (message: string): void => {
    const m = unpack(message);
    if (m === null) {
      this.stats.ignored++;
      return;
    }
    if (m.from === this.instanceId) return;
    this.stats.received++;
    if (m.t === "learn") {
      for (const [pool, table, key, backendId, exp] of learnedEntries(m.e)) {
        if (!Number.isInteger(key) || key < 0 || key >= MAX_KEY || !Number.isFinite(exp)) continue;
        this.apply(() => this.hooks.applyLearned(pool, table, key, backendId, exp));
      }
    } else {
      this.apply(() => this.hooks.applyState(m.pool, m.backend, m.state));
    }
  };

  /** A throwing hook must not take the subscriber down. */
  private apply(f: () => void): void {
    try {
      f();
    } catch (e) {
      this.report("applying a message", e);
    }
  }

  /** Logs a failure at most once per LOG_EVERY_MS per kind, with how many were suppressed. */
  private report(what: string, e: unknown): void {
    const now = Date.now();
    const last = this.lastLogged.get(what);
    if (last && now - last.at < LOG_EVERY_MS) {
      last.suppressed++;
      return;
    }
    this.log.warn(`cluster: redis ${what} failed`, {
      error: e instanceof Error ? e.message : String(e),
      ...(last?.suppressed ? { suppressed: last.suppressed } : {}),
    });
    this.lastLogged.set(what, { at: now, suppressed: 0 });
  }
}

function closeLink(link: Link): void {
  link.cmd.onclose = null;
  link.sub.onclose = null;
  for (const c of [link.cmd, link.sub]) {
    try {
      c.close();
    } catch {
      // Already closed.
    }
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
}

/** publish() takes strings only and sends them as UTF-8, so binary msgpack travels as base64. */
function pack(m: ClusterMessage): string {
  const bytes = encoder.encode(m);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
}

/** A valid message of this protocol version, or null. */
export function unpack(message: unknown): ClusterMessage | null {
  if (typeof message !== "string" || message.length === 0 || message.length > MAX_MESSAGE_CHARS) return null;
  let m: unknown;
  try {
    m = decoder.decode(Buffer.from(message, "base64"));
  } catch {
    return null;
  }
  if (typeof m !== "object" || m === null) return null;
  const x = m as Record<string, unknown>;
  if (x.v !== CLUSTER_PROTOCOL_VERSION || typeof x.from !== "string") return null;
  if (x.t === "learn") return Array.isArray(x.e) ? (x as ClusterMessage) : null;
  if (x.t === "state")
    return typeof x.pool === "string" &&
      typeof x.backend === "string" &&
      typeof x.state === "string" &&
      STATES.has(x.state)
      ? (x as ClusterMessage)
      : null;
  return null;
}
