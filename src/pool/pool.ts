/**
 * A pool of backends and its persistence chain, which chooses among them.
 */
import type { ResolvedBackend, ResolvedPool } from "../config/load.ts";
import type { BackendState } from "../config/schema.ts";
import { PersistenceChain } from "../persistence/chain.ts";
import type { UpstreamTarget } from "../proxy/upstream/types.ts";

export interface Backend {
  readonly id: string;
  weight: number;
  state: BackendState;
  readonly target: UpstreamTarget;
  /** Requests currently being proxied to it. */
  inflight: number;
  /** Most requests in flight at once (Infinity: no limit). */
  maxConn: number;
  /** Known unreachable (set by health checking). */
  down?: boolean;
  /** Callbacks waiting for a free slot under maxConn. */
  waiters: (() => void)[];
}

export interface PoolSettings {
  connectTimeoutMs: number;
  responseTimeoutMs: number;
  retries: number;
  queueTimeoutMs: number;
}

export function toTarget(b: ResolvedBackend): UpstreamTarget {
  const target: UpstreamTarget = { key: b.origin, hostname: b.hostname, port: b.port };
  if (b.secure) {
    target.tls = { verify: b.tls?.verify ?? true };
    if (b.caPem) target.tls.ca = b.caPem;
    if (b.tls?.serverName) target.tls.serverName = b.tls.serverName;
  }
  return target;
}

export class Pool {
  readonly backends: Backend[];
  readonly settings: PoolSettings;
  readonly chain: PersistenceChain;
  private readonly byId = new Map<string, Backend>();

  constructor(
    readonly name: string,
    config: ResolvedPool,
    /** Cookie keys; the first seals. */
    cookieKeys: readonly Buffer[],
    /** The previous generation: its backend objects are reused by id and address. */
    previous?: Pool,
  ) {
    this.settings = {
      connectTimeoutMs: config.connectTimeoutMs,
      responseTimeoutMs: config.responseTimeoutMs,
      retries: config.retries,
      queueTimeoutMs: config.queueTimeoutMs,
    };
    this.backends = config.backends.map((b) => {
      const target = toTarget(b);
      const sameServer = (o: Backend) => o.id === b.id && JSON.stringify(o.target) === JSON.stringify(target);
      const old = previous?.backends.find(sameServer);
      if (old) {
        // Same server: keep the live object so in-flight counts stay right across a reload.
        old.weight = b.weight;
        old.state = b.state;
        old.maxConn = b.maxConn ?? Number.POSITIVE_INFINITY;
        return old;
      }
      const maxConn = b.maxConn ?? Number.POSITIVE_INFINITY;
      return { id: b.id, weight: b.weight, state: b.state, target, inflight: 0, maxConn, waiters: [] };
    });
    this.chain = new PersistenceChain(this.backends, {
      pool: name,
      rules: config.persistence,
      keys: cookieKeys,
      hashBalanceFactor: config.hashBalanceFactor,
      ...(previous ? { previousTables: previous.chain.tables } : {}),
    });
    for (const b of this.backends) this.byId.set(b.id, b);
  }

  get(id: string): Backend | undefined {
    return this.byId.get(id);
  }
}
