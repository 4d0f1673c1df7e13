/**
 * One client connection of a tls-passthrough listener, from accept to close.
 *
 *   header ──► hello ──► connecting ──► open ──► closed
 *   (PROXY     (Client-   (a backend,    (Relay: bytes both ways;
 *    header,    Hello,     retried on     the backend's ServerHello
 *    optional)  ≤16 KiB)   the next       is read as it passes, and
 *                          placement)     its session ID learned)
 *
 * Everything before "open" is bounded in bytes (the parsers' limits) and in
 * time (helloTimeoutMs, then connectTimeoutMs per attempt); bytes that are
 * not a PROXY header or a ClientHello close the connection, counted and
 * audited. Nothing is ever decrypted: the bytes the client sent reach the
 * backend unchanged, after an optional PROXY header of tether's own.
 */
import type { Socket, SocketHandler } from "bun";
import type { ResolvedListener } from "../config/load.ts";
import type { ProxyDeps, Runtime } from "../contracts.ts";
import type { Placement, RequestFacts, ServerHelloLearner } from "../persistence/types.ts";
import { Placing } from "../pool/placement.ts";
import type { Backend, Pool } from "../pool/pool.ts";
import { normalizeIp } from "../proxy/trusted-proxies.ts";
import { hashKey } from "../ring/hash.ts";
import { type ClientHello, parseClientHello } from "./client-hello.ts";
import {
  type Endpoint,
  type ProxyHeaderError,
  parseProxyHeader,
  proxyHeaderFor,
  serializeProxyHeader,
} from "./proxy-protocol.ts";
import { type HelloError, MAX_HELLO_BYTES } from "./records.ts";
import { Relay } from "./relay.ts";
import { learnableSessionId, parseServerHello } from "./server-hello.ts";

export interface PassthroughStats {
  accepted: number;
  active: number;
  /** Connections closed before a backend was chosen, by reason: a parser's error, "timeout" or "closed-early". */
  rejected: Record<string, number>;
  /** Backend connects that failed or timed out. */
  connectFailures: number;
  /** Connections closed because no backend could be reached. */
  noBackend: number;
  /** Session IDs learned from ServerHellos: new ones, and echoed ones (resumptions). */
  learnedNew: number;
  resumed: number;
  /** The most bytes queued for one side of one connection so far. */
  peakQueued: number;
}

export interface TunnelContext {
  readonly config: ResolvedListener;
  readonly current: () => Runtime;
  readonly deps: ProxyDeps;
  readonly stats: PassthroughStats;
  finished(t: Tunnel): void;
}

/** One backend connect attempt; the backend socket's data. */
export interface Leg {
  readonly tunnel: Tunnel;
  readonly backend: Backend;
  readonly placement: Placement;
  timer: ReturnType<typeof setTimeout> | null;
}

type Phase = "header" | "hello" | "connecting" | "open" | "closed";

/** Shared by every connection: passthrough rules never read headers. */
const NO_HEADERS = new Headers();

/** A growable byte buffer for what arrives before the backend is connected. */
class Bytes {
  private buf: Uint8Array = new Uint8Array(0);
  private start = 0;
  private end = 0;

  get length(): number {
    return this.end - this.start;
  }

  append(chunk: Uint8Array): void {
    if (this.length === 0 && this.buf.length === 0) {
      // The usual case, a whole hello in one read: keep the chunk itself (Bun hands over a fresh buffer per read).
      this.buf = chunk;
      this.start = 0;
      this.end = chunk.length;
      return;
    }
    if (this.end + chunk.length > this.buf.length) {
      const next = new Uint8Array(Math.max(this.length + chunk.length, this.length * 2, 1024));
      next.set(this.buf.subarray(this.start, this.end));
      this.buf = next;
      this.end -= this.start;
      this.start = 0;
    }
    this.buf.set(chunk, this.end);
    this.end += chunk.length;
  }

  view(): Uint8Array {
    return this.buf.subarray(this.start, this.end);
  }

  consume(n: number): void {
    this.start += n;
  }
}

export class Tunnel {
  phase: Phase;
  readonly relay: Relay;
  /** When a byte last moved either way (performance.now()). */
  activeAt: number;
  private readonly startedAt = performance.now();
  private readonly inbound = new Bytes();
  private helloTimer: ReturnType<typeof setTimeout> | null = null;
  /** Who the client is: the PROXY header's source, else the TCP peer. */
  private client: Endpoint;
  /** Where the client connected to: the PROXY header's destination, else this socket's local address. */
  private destination: Endpoint;
  private hello: ClientHello | null = null;
  private pool: Pool | null = null;
  private sendProxy: "v1" | "v2" | undefined;
  private placing: Placing | null = null;
  private attempts = 0;
  private leg: Leg | null = null;
  /** The backend counted in its inflight while the relay runs. */
  private counted: Backend | null = null;
  /** Set while the backend's first flight is being read for its ServerHello. */
  private learnRule: ServerHelloLearner | null = null;
  private serverBytes: Bytes | null = null;
  private clientSessionId = "";
  private finished = false;

  constructor(
    private readonly ctx: TunnelContext,
    readonly socket: Socket<Tunnel>,
  ) {
    this.relay = new Relay(() => this.finish());
    this.relay.client.socket = socket;
    this.activeAt = performance.now();
    // A socket reset while being accepted may report no address: "" then (client-ip has no key for it).
    const peer = socket.remoteAddress ?? "";
    const local = socket.localAddress ?? "";
    this.client = { address: normalizeIp(peer) || peer, port: socket.remotePort ?? 0 };
    this.destination = { address: normalizeIp(local) || local, port: socket.localPort ?? 0 };
    this.phase = ctx.config.proxyProtocol ? "header" : "hello";
    ctx.stats.accepted++;
    ctx.stats.active++;
    if (ctx.config.helloTimeoutMs > 0)
      this.helloTimer = setTimeout(
        () => this.reject("timeout", this.phase === "header" ? "proxy-header" : "client-hello"),
        ctx.config.helloTimeoutMs,
      );
  }

  // ---- client socket events ----

  onClientData(chunk: Uint8Array): void {
    this.activeAt = performance.now();
    if (this.phase === "open") this.relay.data(this.relay.client, chunk);
    else if (this.phase === "header" || this.phase === "hello") {
      this.inbound.append(chunk);
      this.readInbound();
    } else if (this.phase === "connecting") this.inbound.append(chunk);
  }

  onClientEnd(): void {
    if (this.phase === "open") this.relay.end(this.relay.client);
    else if (this.phase === "connecting") this.relay.client.eof = true;
    else if (this.phase !== "closed") this.reject("closed-early", null);
  }

  /** `error` is set when the socket did not close cleanly (ECONNRESET for a RST). */
  onClientClose(error?: Error): void {
    if (this.phase !== "open") this.finish();
    else if (error) this.reset("client", error);
    else this.relay.close(this.relay.client);
  }

  onClientDrain(): void {
    this.activeAt = performance.now();
    if (this.phase === "open") this.relay.drain(this.relay.client);
  }

  // ---- backend socket events ----

  onBackendOpen(leg: Leg, s: Socket<Leg>): void {
    if (leg !== this.leg || this.phase !== "connecting") {
      s.terminate();
      return;
    }
    if (leg.timer) clearTimeout(leg.timer);
    const pool = this.pool as Pool;
    const backend = leg.backend;
    this.phase = "open";
    this.activeAt = performance.now();
    this.ctx.deps.health.succeeded(backend);
    backend.inflight++;
    backend.requests++;
    this.counted = backend;
    this.placing?.settle(leg.placement);
    const learner = pool.chain.serverHelloLearner();
    if (learner) {
      this.learnRule = learner;
      this.serverBytes = new Bytes();
    }
    const side = this.relay.backend;
    side.socket = s;
    if (this.sendProxy)
      this.relay.send(
        side,
        serializeProxyHeader(proxyHeaderFor(this.sendProxy === "v1" ? 1 : 2, this.client, this.destination)),
      );
    this.relay.send(side, this.inbound.view());
    // Writes out anything left, then resumes the client (or passes on its FIN).
    this.relay.drain(side);
  }

  onBackendData(leg: Leg, chunk: Uint8Array): void {
    if (leg !== this.leg || this.phase !== "open") return;
    this.activeAt = performance.now();
    this.relay.data(this.relay.backend, chunk);
    if (this.serverBytes) this.readServerHello(leg, chunk);
  }

  onBackendEnd(leg: Leg): void {
    if (leg === this.leg && this.phase === "open") this.relay.end(this.relay.backend);
  }

  onBackendClose(leg: Leg, error?: Error): void {
    if (leg !== this.leg) return;
    if (this.phase === "open") {
      if (error) this.reset("backend", error);
      else this.relay.close(this.relay.backend);
    } else if (this.phase === "connecting") this.connectFailed(leg, "CONNECT_FAILED");
  }

  /** An abortive close on one side is passed on as one (a RST), never as a FIN. */
  private reset(side: "client" | "backend", error: Error): void {
    this.ctx.deps.log.debug("passthrough connection reset", {
      listener: this.ctx.config.name,
      side,
      error: (error as { code?: string }).code ?? error.message,
    });
    this.relay.reset(side === "client" ? this.relay.client : this.relay.backend);
  }

  onBackendDrain(leg: Leg): void {
    if (leg !== this.leg || this.phase !== "open") return;
    this.activeAt = performance.now();
    this.relay.drain(this.relay.backend);
  }

  connectFailed(leg: Leg, code: "CONNECT_FAILED" | "CONNECT_TIMEOUT"): void {
    if (leg !== this.leg || this.phase !== "connecting") return;
    if (leg.timer) clearTimeout(leg.timer);
    this.leg = null;
    const pool = this.pool as Pool;
    const { deps, config, stats } = this.ctx;
    stats.connectFailures++;
    leg.backend.errors++;
    deps.log.warn("upstream failed", {
      listener: config.name,
      pool: pool.name,
      backend: leg.backend.id,
      code,
      attempt: this.attempts - 1,
    });
    deps.metrics.connectError(pool.name, leg.backend.id);
    deps.health.failed(pool, leg.backend, code);
    const next =
      this.attempts <= pool.settings.retries ? (this.placing as Placing).next(leg.placement) : null;
    if (next) this.connect(next);
    else this.giveUp("no backend reachable");
  }

  /** Errors on a socket are followed by its close event; they are only logged. */
  socketError(side: "client" | "backend", err: Error): void {
    this.ctx.deps.log.debug("passthrough socket error", {
      listener: this.ctx.config.name,
      side,
      error: (err as { code?: string }).code ?? err.message,
    });
  }

  /** No bytes either way for clientIdleMs (or the listener is closing). */
  abort(): void {
    if (this.phase === "open") this.relay.abort();
    else if (this.phase !== "closed") {
      this.socket.terminate();
      this.finish();
    }
  }

  // ---- before the backend ----

  private readInbound(): void {
    if (this.phase === "header") {
      const r = parseProxyHeader(this.inbound.view());
      if (r.kind === "incomplete") return;
      if (r.kind === "invalid") {
        this.reject(r.reason, "proxy-header");
        return;
      }
      const h = r.header;
      // LOCAL (the balancer's own check) and UNKNOWN keep the real peer.
      if (h.command === "proxy" && h.source && h.destination) {
        this.client = h.source;
        this.destination = h.destination;
      }
      this.inbound.consume(r.length);
      this.phase = "hello";
    }
    const r = parseClientHello(this.inbound.view());
    if (r.kind === "incomplete") return;
    if (r.kind === "invalid") {
      this.reject(r.reason, "client-hello");
      return;
    }
    this.helloDone(r.hello);
  }

  /** Bytes that are not what the listener waits for, a timeout, or a client gone early: close, count, audit. */
  private reject(
    reason: HelloError | ProxyHeaderError | "timeout" | "closed-early",
    input: "proxy-header" | "client-hello" | null,
  ): void {
    if (this.phase !== "header" && this.phase !== "hello") return;
    const { stats, deps, config } = this.ctx;
    stats.rejected[reason] = (stats.rejected[reason] ?? 0) + 1;
    // A client that goes away before its hello is not an attack worth an audit line.
    if (input !== null) {
      const fields = {
        listener: config.name,
        client: this.client.address,
        rule: "tls-passthrough",
        reason: reason === "timeout" ? "timeout" : "malformed",
        input,
        detail: reason,
      };
      deps.audit.emit("persistence.rejected", fields);
      deps.log.debug("connection rejected", fields);
    }
    this.phase = "closed";
    this.socket.end();
    this.finish();
  }

  private helloDone(hello: ClientHello): void {
    if (this.helloTimer) clearTimeout(this.helloTimer);
    this.helloTimer = null;
    this.hello = hello;
    // Nothing more is read until a backend can take it.
    this.socket.pause();
    this.relay.client.paused = true;
    const runtime = this.ctx.current();
    const { config, deps } = this.ctx;
    const listener = runtime.listeners.get(config.name) ?? config;
    const router = runtime.routers.get(config.name);
    const picked = router ? router.pick(hello.serverName, "/") : listener.pool;
    // The config validator refuses splits on tls-passthrough listeners: a split needs a cookie.
    const poolName = typeof picked === "string" ? picked : listener.pool;
    const pool = runtime.pools.get(poolName);
    if (!pool) {
      this.giveUp(`pool ${poolName} missing`);
      return;
    }
    this.pool = pool;
    this.sendProxy = runtime.config.pools[poolName]?.sendProxyProtocol;
    this.clientSessionId = hello.sessionId.length
      ? Buffer.from(hello.sessionId.buffer, hello.sessionId.byteOffset, hello.sessionId.length).toString(
          "hex",
        )
      : "";
    const clientIp = normalizeIp(this.client.address) || "0.0.0.0";
    const facts: RequestFacts = {
      cookie: null,
      target: "/",
      clientIp,
      headers: NO_HEADERS,
      nowSec: Math.floor(Date.now() / 1000),
      ...(this.clientSessionId ? { tlsSessionId: this.clientSessionId } : {}),
    };
    this.phase = "connecting";
    const placing = new Placing(pool, facts, listener.name, deps);
    this.placing = placing;
    if (deps.cluster && this.clientSessionId) {
      // A session ID another instance learned is fetched first (bounded by the lookup's own timeout).
      const go = () => this.placeAndConnect(placing);
      placing.prefetch().then(go, go);
    } else this.placeAndConnect(placing);
  }

  private placeAndConnect(placing: Placing): void {
    // The client may have gone while a cluster lookup ran.
    if (this.phase !== "connecting") return;
    const first = placing.start();
    if (!first) {
      this.giveUp(placing.isHeld ? "session held: its backend is unavailable" : "no eligible backend");
      return;
    }
    this.connect(first);
  }

  private connect(placement: Placement): void {
    const pool = this.pool as Pool;
    const backend = pool.get(placement.backendId);
    if (!backend) {
      this.giveUp(`backend ${placement.backendId} missing`);
      return;
    }
    this.attempts++;
    const leg: Leg = { tunnel: this, backend, placement, timer: null };
    this.leg = leg;
    const ms = pool.settings.connectTimeoutMs;
    if (ms > 0) leg.timer = setTimeout(() => this.connectFailed(leg, "CONNECT_TIMEOUT"), ms);
    Bun.connect<Leg>({
      hostname: backend.target.hostname,
      port: backend.target.port,
      data: leg,
      allowHalfOpen: true,
      socket: backendHandlers,
    }).catch(() => this.connectFailed(leg, "CONNECT_FAILED"));
  }

  private giveUp(why: string): void {
    const { stats, deps, config } = this.ctx;
    stats.noBackend++;
    deps.log.warn("passthrough connection dropped", {
      listener: config.name,
      pool: this.pool?.name ?? "",
      client: this.client.address,
      why,
    });
    this.phase = "closed";
    this.socket.end();
    this.finish();
  }

  // ---- the backend's first flight ----

  private readServerHello(leg: Leg, chunk: Uint8Array): void {
    const bytes = this.serverBytes as Bytes;
    bytes.append(chunk);
    const r = parseServerHello(bytes.view());
    if (r.kind === "incomplete" && bytes.length < MAX_HELLO_BYTES + 5) return;
    this.serverBytes = null;
    const rule = this.learnRule;
    this.learnRule = null;
    if (r.kind !== "hello" || !rule) return;
    const sid = learnableSessionId(r.hello);
    if (!sid) return;
    const now = Date.now();
    rule.learn(sid, leg.backend.id, Math.floor(now / 1000));
    leg.backend.sessions.add(hashKey(sid), now);
    const resumed = sid === this.clientSessionId;
    if (resumed) this.ctx.stats.resumed++;
    else this.ctx.stats.learnedNew++;
    this.ctx.deps.log.debug("tls session learned", {
      listener: this.ctx.config.name,
      pool: this.pool?.name ?? "",
      backend: leg.backend.id,
      // Never the ID itself: a short unkeyed hash, enough to follow one session through the log.
      session: hashKey(sid).toString(16).padStart(8, "0"),
      resumed,
    });
  }

  // ---- the end ----

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    this.phase = "closed";
    if (this.helloTimer) clearTimeout(this.helloTimer);
    this.helloTimer = null;
    if (this.leg?.timer) clearTimeout(this.leg.timer);
    const stats = this.ctx.stats;
    stats.active--;
    if (this.relay.peakQueued > stats.peakQueued) stats.peakQueued = this.relay.peakQueued;
    if (this.counted) this.counted.inflight--;
    const runtime = this.ctx.current();
    if (runtime.config.accessLog && this.counted) {
      this.ctx.deps.log.info("connection", {
        listener: this.ctx.config.name,
        client: this.client.address,
        sni: this.hello?.serverName ?? null,
        pool: this.pool?.name ?? "",
        backend: this.counted.id,
        up: this.relay.up,
        down: this.relay.down,
        ms: Math.round(performance.now() - this.startedAt),
      });
    }
    this.counted = null;
    this.ctx.finished(this);
  }
}

/** Handlers shared by every backend socket; each socket's data is its Leg. */
const backendHandlers: SocketHandler<Leg> = {
  open(s) {
    s.data.tunnel.onBackendOpen(s.data, s);
  },
  data(s, chunk) {
    s.data.tunnel.onBackendData(s.data, chunk);
  },
  drain(s) {
    s.data.tunnel.onBackendDrain(s.data);
  },
  end(s) {
    s.data.tunnel.onBackendEnd(s.data);
  },
  close(s, error) {
    s.data.tunnel.onBackendClose(s.data, error);
  },
  connectError(s) {
    s.data.tunnel.connectFailed(s.data, "CONNECT_FAILED");
  },
  error(s, err) {
    s.data.tunnel.socketError("backend", err);
  },
};
