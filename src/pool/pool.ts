/**
 * A pool of backends and the choice of one for a request. For now new
 * requests are spread round-robin over eligible backends; the persistence
 * engine replaces pickNew with the ring. Eligibility is asked in one place
 * (isEligibleForNew) so no policy re-implements it.
 */
import type { ResolvedBackend, ResolvedPool } from "../config/load.ts";
import type { BackendState } from "../config/schema.ts";
import type { UpstreamTarget } from "../proxy/upstream/types.ts";

export interface Backend {
  readonly id: string;
  weight: number;
  state: BackendState;
  readonly target: UpstreamTarget;
  /** Requests currently being proxied to it. */
  inflight: number;
}

export interface PoolSettings {
  connectTimeoutMs: number;
  responseTimeoutMs: number;
  retries: number;
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

/** A backend takes new sessions only when ready and weighted. */
export const isEligibleForNew = (b: Backend) => b.state === "ready" && b.weight > 0;

export class Pool {
  readonly backends: Backend[];
  readonly settings: PoolSettings;
  private cursor = 0;

  constructor(
    readonly name: string,
    config: ResolvedPool,
    /** The previous generation: its backend objects are reused by id and address. */
    previous?: Pool,
  ) {
    this.settings = {
      connectTimeoutMs: config.connectTimeoutMs,
      responseTimeoutMs: config.responseTimeoutMs,
      retries: config.retries,
    };
    this.backends = config.backends.map((b) => {
      const target = toTarget(b);
      const sameServer = (o: Backend) => o.id === b.id && JSON.stringify(o.target) === JSON.stringify(target);
      const old = previous?.backends.find(sameServer);
      if (old) {
        // Same server: keep the live object so in-flight counts stay right across a reload.
        old.weight = b.weight;
        old.state = b.state;
        return old;
      }
      return { id: b.id, weight: b.weight, state: b.state, target, inflight: 0 };
    });
  }

  /** Next eligible backend for a new request, skipping those already tried. */
  pickNew(exclude?: ReadonlySet<Backend>): Backend | null {
    const n = this.backends.length;
    for (let i = 0; i < n; i++) {
      const b = this.backends[(this.cursor + i) % n] as Backend;
      if (!isEligibleForNew(b) || exclude?.has(b)) continue;
      this.cursor = (this.cursor + i + 1) % n;
      return b;
    }
    return null;
  }
}
