/**
 * Cluster sync: learned stick-table entries and operator backend states
 * shared between tether instances through Redis, with Bun's RedisClient.
 *
 *   learned entry  SET {prefix}t:{pool}:{table}:{key} = backendId EX <seconds left>
 *   backend state  SET {prefix}s:{pool}:{backend} = state, or "drain@<ms>" with a deadline (no TTL)
 *   both           PUBLISH {prefix}events base64(msgpack {v, from, t, ...})
 *   API backend    HSET {prefix}backends {pool}:{id} = JSON {url, weight}, and "v" = 1 (the set
 *                  has been seeded: shared-backends.ts); HDEL when deleted; same PUBLISH
 *
 * Redis is an accelerator, never a dependency: every call has a deadline, the
 * offline queue is off (Bun would otherwise hold commands for a dead server
 * indefinitely), and while Redis is unreachable lookups answer null at once,
 * writes are dropped (states are kept and replayed) and a background loop
 * reconnects (redis-link.ts). No request waits longer than lookupTimeoutMs or
 * fails because of Redis.
 *
 * Bun's RedisClient, measured (1.4.5): publish() accepts only strings, and a
 * string carrying raw bytes is sent as UTF-8 (0x80 arrives as C2 80), hence
 * base64.
 */

import type { RedisClient } from "bun";
import type { BackendState } from "../config/schema.ts";
import type { Logger } from "../log.ts";
import { formatState, type OperatorState, parseState, validUntil } from "../pool/drain.ts";
import { decoder, encoder } from "./codec.ts";
import { LEARNED_FIELDS, LearnBatcher, type LearnedBatch, learnedEntries } from "./learn-batch.ts";
import { RedisLink, withTimeout } from "./redis-link.ts";
import type { SharedBackend } from "./shared-backends.ts";

export const CLUSTER_PROTOCOL_VERSION = 1;

/** Where entries and states learned by other instances are applied. */
export interface ClusterHooks {
  applyLearned(pool: string, table: string, key: number, backendId: string, expiresAtSec: number): void;
  applyState(pool: string, backend: string, state: OperatorState): void;
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
  | {
      v: number;
      from: string;
      t: "state";
      pool: string;
      backend: string;
      state: BackendState;
      /** A drain's deadline (ms since the epoch); absent or 0: none. Instances that predate it read a plain drain. */
      until?: number;
    };

/** Backends added through the admin API, as another instance shared them. */
export interface SharedBackendHooks {
  /** Added or changed (present), or deleted, on another instance. */
  applyBackend(b: SharedBackend, present: boolean): void;
  /** The whole set, read after connecting; null when Redis holds none yet (this instance seeds it). */
  syncBackends(shared: SharedBackend[] | null): void;
}

/** `url` absent: the backend was deleted. */
type BackendMessage = {
  v: number;
  from: string;
  t: "backend";
  pool: string;
  id: string;
  url?: string;
  weight?: number;
};

/** Writes, PUBLISH, SCAN: fire-and-forget, but never left pending forever. */
const WRITE_TIMEOUT_MS = 2000;
/** loadStates() as a whole. */
const LOAD_TIMEOUT_MS = 2000;
/** A message bigger than this (base64 chars) is not ours: 512 entries take ~40 KB. */
const MAX_MESSAGE_CHARS = 4 * 1024 * 1024;
const MAX_KEY = 2 ** 48;
const STATES: ReadonlySet<string> = new Set<BackendState>(["ready", "drain", "maint"]);

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
  /** GET, SET, PUBLISH, SCAN on its command connection; the events channel on its subscriber. */
  private readonly link: RedisLink;
  private started = false;
  private stopped = false;
  /** Learned entries go out every 2 ms or every 512 entries, whichever comes first. */
  private readonly learned = new LearnBatcher((e) => this.writeLearned(e));
  /** API backends not yet written (Redis was down or the write failed): replayed on reconnect. */
  private readonly unsentBackends = new Map<string, [SharedBackend, boolean]>();
  private backendHooks: SharedBackendHooks | null = null;
  /** States not yet written (Redis was down or the write failed): replayed on reconnect. */
  private readonly unsentStates = new Map<string, [string, string, OperatorState]>();

  constructor(
    private readonly opts: ClusterOptions,
    private readonly log: Logger,
    private readonly hooks: ClusterHooks,
  ) {
    if (!(opts.lookupTimeoutMs > 0)) throw new Error("cluster.redis.lookupTimeoutMs: must be above 0");
    this.channel = `${opts.prefix}events`;
    this.link = new RedisLink({ url: opts.url, channel: this.channel, name: "cluster" }, log, {
      message: this.onMessage,
      lost: (e) =>
        log.warn("cluster: redis connection lost; serving from local tables and reconnecting", {
          error: e.message,
        }),
      reconnected: async (wasConnected) => {
        this.stats.reconnects++;
        log.info(wasConnected ? "cluster: reconnected to redis" : "cluster: connected to redis", {
          channel: this.channel,
        });
        await this.resync();
      },
    });
  }

  /** True while both connections are up and the subscription is in place. */
  get connected(): boolean {
    return this.link.connected;
  }

  /**
   * Connects and subscribes, waiting at most ~1 s. Never throws: an
   * unreachable Redis is logged and retried in the background.
   */
  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    const error = await this.link.start();
    if (error === null) {
      this.log.info("cluster: connected to redis", { channel: this.channel, instance: this.instanceId });
      await this.replayStates();
    } else {
      this.log.warn("cluster: redis unreachable; serving from local tables and retrying", {
        error: error.message,
      });
    }
  }

  /** Queues a learned entry (or re-pin) for Redis and the other instances. Never throws. */
  publishLearned(pool: string, table: string, key: number, backendId: string, expiresAtSec: number): void {
    if (this.stopped) return;
    this.learned.add(pool, table, key, backendId, expiresAtSec);
  }

  /** Writes an operator state and tells the other instances. Never throws; replayed after an outage. */
  publishState(pool: string, backend: string, state: OperatorState): void {
    if (this.stopped) return;
    const id = `${pool}\0${backend}`;
    this.unsentStates.set(id, [pool, backend, state]);
    const cmd = this.link.cmd;
    if (!cmd) return;
    this.sendState(cmd, pool, backend, state).then(
      () => {
        // A newer state for the same backend may have been queued meanwhile; keep that one.
        if (sameState(this.unsentStates.get(id)?.[2], state)) this.unsentStates.delete(id);
      },
      (e) => this.link.report("state write", e),
    );
  }

  /** Where backends shared by other instances are applied (set before start()). */
  shareBackends(hooks: SharedBackendHooks): void {
    this.backendHooks = hooks;
  }

  /**
   * Writes an API backend added or changed (present) or deleted here and
   * tells the other instances. Never throws; replayed after an outage, before
   * the set is read back, so a change made while Redis was down is not undone.
   */
  publishBackend(b: SharedBackend, present: boolean): void {
    if (this.stopped) return;
    const id = `${b.pool}\0${b.id}`;
    const entry: [SharedBackend, boolean] = [{ ...b }, present];
    this.unsentBackends.set(id, entry);
    const cmd = this.link.cmd;
    if (!cmd) return;
    this.sendBackend(cmd, entry[0], present).then(
      () => {
        if (this.unsentBackends.get(id) === entry) this.unsentBackends.delete(id);
      },
      (e) => this.link.report("backend write", e),
    );
  }

  /**
   * Reads the shared set and hands it to the hooks. Changes made here while
   * Redis was unreachable are written first, so they are not undone; but a
   * Redis that holds no set (new, or restarted without its data) gets none of
   * them: the hooks write this instance's whole set instead. Does nothing
   * (the last known set stays) when Redis cannot be reached or a step fails.
   */
  async syncBackends(): Promise<void> {
    const hooks = this.backendHooks;
    const cmd = this.link.cmd;
    if (!hooks || !cmd) return;
    const read = async () =>
      parseBackends(await withTimeout(cmd.hgetall(this.backendsKey()), LOAD_TIMEOUT_MS, "loading backends"));
    try {
      let shared = await read();
      if (shared === null) this.unsentBackends.clear();
      else if (this.unsentBackends.size) {
        for (const [id, entry] of [...this.unsentBackends]) {
          await this.sendBackend(cmd, entry[0], entry[1]);
          if (this.unsentBackends.get(id) === entry) this.unsentBackends.delete(id);
        }
        shared = await read();
      }
      this.apply(() => hooks.syncBackends(shared));
    } catch (e) {
      // The last known set stays; the next reconnect tries again.
      this.link.report("backend sync (keeping the last known set)", e);
    }
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
    const cmd = this.link.cmd;
    if (!cmd) return Promise.resolve(null);
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
      Promise.all([cmd.get(k), cmd.pttl(k)]).then(
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
          this.link.report("lookup", e);
          resolve(null);
        },
      );
    });
  }

  /** Every backend state stored in Redis, [pool, backend, state]; [] on failure or without a connection. */
  async loadStates(): Promise<[string, string, OperatorState][]> {
    const cmd = this.link.cmd;
    if (!cmd) return [];
    try {
      return await withTimeout(this.scanStates(cmd), LOAD_TIMEOUT_MS, "loading states");
    } catch (e) {
      this.link.report("load states", e);
      return [];
    }
  }

  /** Flushes queued entries (bounded), then closes both connections. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await this.link.stop(() => this.learned.flush());
  }

  private tableKey(pool: string, table: string, key: number): string {
    return `${this.opts.prefix}t:${pool}:${table}:${key}`;
  }

  private stateKey(pool: string, backend: string): string {
    return `${this.opts.prefix}s:${pool}:${backend}`;
  }

  private backendsKey(): string {
    return `${this.opts.prefix}backends`;
  }

  private sendBackend(cmd: RedisClient, b: SharedBackend, present: boolean): Promise<unknown> {
    const field = `${b.pool}:${b.id}`;
    const msg: BackendMessage = {
      v: CLUSTER_PROTOCOL_VERSION,
      from: this.instanceId,
      t: "backend",
      pool: b.pool,
      id: b.id,
      ...(present ? { url: b.url, weight: b.weight } : {}),
    };
    const key = this.backendsKey();
    const write = present
      ? cmd.hset(key, { [field]: JSON.stringify({ url: b.url, weight: b.weight }), v: "1" })
      : Promise.all([cmd.hdel(key, field), cmd.hset(key, { v: "1" })]);
    return withTimeout(
      Promise.all([write, cmd.publish(this.channel, pack(msg))]),
      WRITE_TIMEOUT_MS,
      "backend write",
    );
  }

  /** Writes a batch of learned entries; the returned promise settles when Redis answered (or the deadline). */
  private writeLearned(e: LearnedBatch): Promise<void> | null {
    const cmd = this.link.cmd;
    if (!cmd) {
      this.stats.dropped += e.length / LEARNED_FIELDS;
      return null;
    }
    const nowSec = Math.floor(Date.now() / 1000);
    const writes: Promise<unknown>[] = [];
    for (const [pool, table, key, backendId, expiresAtSec] of learnedEntries(e)) {
      if (expiresAtSec <= nowSec) continue;
      // The expiry as the absolute second it is: a relative TTL counts from whenever Redis gets
      // the write, and one sent just before a second ticks over comes back a second late.
      writes.push(cmd.set(this.tableKey(pool, table, key), backendId, "EXAT", expiresAtSec));
    }
    this.stats.published += writes.length;
    writes.push(
      cmd.publish(this.channel, pack({ v: CLUSTER_PROTOCOL_VERSION, from: this.instanceId, t: "learn", e })),
    );
    return withTimeout(Promise.all(writes), WRITE_TIMEOUT_MS, "learned write").then(
      () => {},
      (err) => this.link.report("learned write", err),
    );
  }

  private sendState(cmd: RedisClient, pool: string, backend: string, s: OperatorState): Promise<unknown> {
    const msg = pack({
      v: CLUSTER_PROTOCOL_VERSION,
      from: this.instanceId,
      t: "state",
      pool,
      backend,
      state: s.state,
      ...(s.until > 0 ? { until: s.until } : {}),
    });
    return withTimeout(
      Promise.all([cmd.set(this.stateKey(pool, backend), formatState(s)), cmd.publish(this.channel, msg)]),
      WRITE_TIMEOUT_MS,
      "state write",
    );
  }

  private async scanStates(cmd: RedisClient): Promise<[string, string, OperatorState][]> {
    const head = `${this.opts.prefix}s:`;
    // SCAN's MATCH is a glob: escape the prefix's own glob characters.
    const pattern = `${head.replace(/[*?[\]\\]/g, "\\$&")}*`;
    const keys = new Set<string>();
    let cursor = "0";
    do {
      const [next, batch] = await cmd.scan(cursor, "MATCH", pattern, "COUNT", 1000);
      for (const k of batch) keys.add(k);
      cursor = next;
    } while (cursor !== "0");
    const list = [...keys];
    const out: [string, string, OperatorState][] = [];
    for (let i = 0; i < list.length; i += 1000) {
      const chunk = list.slice(i, i + 1000);
      const values = await cmd.mget(...chunk);
      chunk.forEach((k, j) => {
        const state = parseState(values[j]);
        // Pool names and backend ids cannot hold ':' (config schema), so the first one splits them.
        const rest = k.slice(head.length);
        const colon = rest.indexOf(":");
        if (colon <= 0 || colon === rest.length - 1 || state === null) return;
        out.push([rest.slice(0, colon), rest.slice(colon + 1), state]);
      });
    }
    return out;
  }

  /** After an outage: write the states set meanwhile, then pick up the ones others set. */
  private async resync(): Promise<void> {
    if (!(await this.replayStates())) return;
    for (const [pool, backend, state] of await this.loadStates())
      this.apply(() => this.hooks.applyState(pool, backend, state));
    await this.syncBackends();
  }

  /** Writes the states set while Redis was unreachable; false if one failed (kept for the next time). */
  private async replayStates(): Promise<boolean> {
    const cmd = this.link.cmd;
    if (!cmd) return false;
    for (const [id, [pool, backend, state]] of [...this.unsentStates]) {
      try {
        await this.sendState(cmd, pool, backend, state);
        if (sameState(this.unsentStates.get(id)?.[2], state)) this.unsentStates.delete(id);
      } catch (e) {
        this.link.report("state write", e);
        return false;
      }
    }
    return true;
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
    if (m.t === "backend") {
      const hooks = this.backendHooks;
      const b = { pool: m.pool, id: m.id, url: m.url ?? "", weight: m.weight ?? 1 };
      if (hooks) this.apply(() => hooks.applyBackend(b, m.url !== undefined));
      return;
    }
    if (m.t === "learn") {
      for (const [pool, table, key, backendId, exp] of learnedEntries(m.e)) {
        if (!Number.isInteger(key) || key < 0 || key >= MAX_KEY || !Number.isFinite(exp)) continue;
        this.apply(() => this.hooks.applyLearned(pool, table, key, backendId, exp));
      }
    } else {
      const state = { state: m.state, until: m.state === "drain" ? validUntil(m.until) : 0 };
      this.apply(() => this.hooks.applyState(m.pool, m.backend, state));
    }
  };

  /** A throwing hook must not take the subscriber down. */
  private apply(f: () => void): void {
    try {
      f();
    } catch (e) {
      this.link.report("applying a message", e);
    }
  }
}

const sameState = (a: OperatorState | undefined, b: OperatorState) =>
  a !== undefined && a.state === b.state && a.until === b.until;

/** publish() takes strings only and sends them as UTF-8, so binary msgpack travels as base64. */
function pack(m: ClusterMessage | BackendMessage): string {
  const bytes = encoder.encode(m);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
}

/** A valid message of this protocol version, or null. */
export function unpack(message: unknown): ClusterMessage | BackendMessage | null {
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
  if (x.t === "backend") return validBackendMessage(x) ? (x as BackendMessage) : null;
  if (x.t === "state")
    return typeof x.pool === "string" &&
      typeof x.backend === "string" &&
      typeof x.state === "string" &&
      STATES.has(x.state)
      ? (x as ClusterMessage)
      : null;
  return null;
}

function validBackendMessage(x: Record<string, unknown>): boolean {
  if (typeof x.pool !== "string" || typeof x.id !== "string") return false;
  return x.url === undefined || (typeof x.url === "string" && typeof x.weight === "number");
}

/** The shared set from HGETALL: null when not seeded; malformed fields are skipped. */
function parseBackends(all: Record<string, string> | null): SharedBackend[] | null {
  if (all?.v !== "1") return null;
  const out: SharedBackend[] = [];
  for (const [field, value] of Object.entries(all)) {
    // Pool names and backend ids cannot hold ':' (config schema); fields without one are markers.
    const colon = field.indexOf(":");
    if (colon <= 0 || colon === field.length - 1) continue;
    try {
      const v = JSON.parse(value) as { url?: unknown; weight?: unknown };
      if (typeof v.url !== "string" || typeof v.weight !== "number") continue;
      out.push({ pool: field.slice(0, colon), id: field.slice(colon + 1), url: v.url, weight: v.weight });
    } catch {}
  }
  return out;
}
