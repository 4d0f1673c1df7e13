/**
 * WebSocket proxying. The backend handshake runs first, on tether's own
 * HTTP/1.1 client (upstream/ws-client.ts), so the backend chooses the
 * subprotocol, and a backend that refuses the upgrade (401, 403, 404 ...)
 * gets its answer to the client as it is: status, headers and body. Only a
 * connect that failed is tried on the session's next backend.
 *
 * An open WebSocket counts on its backend (Backend.websockets, under
 * maxWebSockets) until either side closes: bounded loads, the admin API and
 * metrics see it, and it never holds one of the request slots maxConn guards.
 * Frames are relayed as whole messages; each side pauses the other when its
 * buffer fills.
 */
import type { WebSocketHandler } from "bun";
import type { ProxyDeps, RequestInfo } from "../contracts.ts";
import type { FieldLookup, Placement } from "../persistence/types.ts";
import { Placing } from "../pool/placement.ts";
import type { Backend, ClosableSocket, Pool } from "../pool/pool.ts";
import { responseFacts, toClientResponse } from "./client-response.ts";
import { errorResponse, ProxyError } from "./errors.ts";
import { appendBackendFields, emptyHead, type FieldRecord, scanRequestFields } from "./headers.ts";
import { failedResponse, record, unexpected, upstreamFailed } from "./outcomes.ts";
import {
  auditSplit,
  clientUsesTls,
  forwardFacts,
  poolFor,
  requestFacts,
  type SplitSlot,
  withSplitCookie,
} from "./request-facts.ts";
import type { AbortLike } from "./upstream/types.ts";
import {
  openUpstreamWebSocket,
  type UpstreamWebSocket,
  type WebSocketUpgrade,
} from "./upstream/ws-client.ts";

/** Pause the backend when the client's send buffer holds more than this. */
const HIGH_WATER_BYTES = 1024 * 1024;

export interface WsData {
  kind: "proxy";
  upstream: UpstreamWebSocket;
  /** Released when the socket closes, on whichever side closes first. */
  backend: Backend;
  closed: boolean;
  /** Registered on the backend while open, so a drain's deadline can end it. */
  closer?: ClosableSocket;
}

/**
 * The client's side of an open WebSocket, as the relay uses it: Bun.serve's
 * ServerWebSocket, or the one tether's own HTTP/1.1 front end runs.
 */
export interface ClientSocket {
  readonly data: WsData;
  /** Bytes sent; -1 when the socket is buffering (backpressure), 0 when dropped. */
  sendText(data: string): number;
  sendBinary(data: Uint8Array): number;
  close(code?: number, reason?: string): void;
  pause(): void;
  resume(): void;
  getBufferedAmount(): number;
}

/** The handshake as the front end read it. */
export interface UpgradeRequest {
  method: string;
  /** Origin-form. */
  target: string;
  /** Lowercase names, merged as Headers.toJSON merges them. */
  fields: FieldRecord;
  headers: FieldLookup;
}

/**
 * Answers the client's handshake with 101 (Sec-WebSocket-Accept and
 * `headers` added) and opens the client side with `data`; false when the
 * client's handshake is malformed.
 */
export type Upgrader = (data: WsData, headers: Headers) => boolean;

/** Headers that belong to the client's own handshake; the backend handshake makes its own. */
const HANDSHAKE = new Set([
  "sec-websocket-key",
  "sec-websocket-version",
  "sec-websocket-extensions",
  "connection",
  "upgrade",
]);

/** 1005 and 1006 are reserved for "no code" and "abnormal" and may not be sent (RFC 6455 §7.4.1). */
function sendableCode(code: number | undefined): number {
  if (code === undefined || code === 1005 || code === 1006 || code === 1015) return 1000;
  return code;
}

/** The socket is gone on both sides: its backend has room for another. */
function finish(data: WsData): void {
  if (data.closed) return;
  data.closed = true;
  data.backend.closeWebSocket();
  if (data.closer) data.backend.sockets.delete(data.closer);
}

const GOING_AWAY = 1001;

interface Handshake {
  placement: Placement;
  backend: Backend;
  upgrade: WebSocketUpgrade;
}

/**
 * Opens the backend side, trying the session's next backend when one cannot
 * be reached or has no room for another WebSocket. The backend is counted
 * from the first attempt; the caller releases it unless the socket opens.
 */
async function handshake(
  placing: Placing,
  request: { target: string; headers: [string, string][] },
  signal: AbortLike,
  deps: ProxyDeps,
): Promise<Handshake> {
  const pool = placing.pool;
  let placement = placing.start();
  let lastError: ProxyError | null = null;
  for (let attempt = 0; placement && attempt <= pool.settings.retries; attempt++) {
    const backend = placing.backendOf(placement);
    if (!backend.openWebSocket()) {
      lastError = new ProxyError("NO_BACKEND", `${backend.id} is at maxWebSockets`);
      placement = placing.next(placement);
      continue;
    }
    try {
      const upgrade = await openUpstreamWebSocket(backend.target, request, {
        connectTimeoutMs: pool.settings.connectTimeoutMs,
        responseTimeoutMs: pool.settings.responseTimeoutMs || 30_000,
        signal,
      });
      return { placement, backend, upgrade };
    } catch (e) {
      backend.closeWebSocket();
      if (!(e instanceof ProxyError)) throw e;
      if (signal.aborted) throw new ProxyError("BAD_REQUEST", "client went away");
      upstreamFailed(deps, pool, backend, e, attempt);
      lastError = e;
      if (!e.safeToRetry) break;
      placement = placing.next(placement);
    }
  }
  throw placing.isHeld || !lastError ? placing.noPlacement() : lastError;
}

export async function upgradeWebSocket(
  req: UpgradeRequest,
  upgrade: Upgrader,
  info: RequestInfo & { signal: AbortLike },
  deps: ProxyDeps,
): Promise<Response | undefined> {
  const target = req.target;
  let pool: Pool | null = null;
  try {
    const head = emptyHead();
    const fields: string[] = [];
    scanRequestFields(req.fields, head, fields);
    const facts = requestFacts(head, req.headers, target, info);
    const slot: SplitSlot = { split: null };
    pool = poolFor(head.host, target, info, facts, slot);
    const fwd = forwardFacts(info);
    const cookie = facts.cookie === null ? null : pool.chain.backendCookie(facts.cookie);
    appendBackendFields(fields, head, fwd, cookie);
    if (pool.chain.rewritesFields) pool.chain.backendFields(fields);
    // The handshake's own fields are left out: the backend handshake makes its own.
    const headers: [string, string][] = [];
    for (let i = 0; i < fields.length; i += 2) {
      const name = fields[i] as string;
      if (!HANDSHAKE.has(name)) headers.push([name, fields[i + 1] as string]);
    }
    const placing = new Placing(pool, facts, info.listener.name, deps);
    if (deps.cluster) await placing.prefetch();
    const {
      placement,
      backend,
      upgrade: answer,
    } = await handshake(placing, { target, headers }, info.signal, deps);
    const status = answer.kind === "open" ? 101 : answer.response.status;
    deps.health.answered(pool, backend, status);
    placing.settle(placement);
    record(deps, info, pool, backend, status);
    if (slot.split !== null)
      auditSplit(deps.audit, slot.split, info.listener.name, facts.clientIp, backend.id);
    const secure = clientUsesTls(head, fwd);
    if (answer.kind === "refused") {
      backend.closeWebSocket();
      const effects = withSplitCookie(
        pool.chain.remember(facts, placement, responseFacts(answer.response, secure)),
        slot.split,
        secure,
      );
      deps.flushLearned?.();
      return toClientResponse(answer.response, req.method, effects, info);
    }
    const noResponse = { setCookies: [], location: null, cacheControl: null, secure };
    const upgradeHeaders = new Headers(answer.protocol ? { "sec-websocket-protocol": answer.protocol } : {});
    for (const e of withSplitCookie(pool.chain.remember(facts, placement, noResponse), slot.split, secure)) {
      if (e.kind === "set-cookie") upgradeHeaders.append("set-cookie", e.header);
      else if (e.kind === "set-header") upgradeHeaders.set(e.name, e.value);
    }
    deps.flushLearned?.();
    const data: WsData = { kind: "proxy", upstream: answer.connection, backend, closed: false };
    if (!upgrade(data, upgradeHeaders)) {
      answer.connection.abort();
      finish(data);
      return errorResponse(400, "The WebSocket upgrade request is malformed.");
    }
    if (info.runtime.config.accessLog) {
      deps.log.info("websocket", {
        listener: info.listener.name,
        client: info.peerIp,
        pool: pool.name,
        backend: backend.id,
      });
    }
    return undefined;
  } catch (e) {
    return failedResponse(e instanceof ProxyError ? e : unexpected(e, deps, info), deps, info, pool);
  }
}

/** Relays messages between the client socket and its backend connection, for either front end. */
export const relay = {
  open(client: ClientSocket): void {
    const data = client.data;
    const upstream = data.upstream;
    // A drain's deadline ends the socket on both sides with 1001, "going away" (RFC 6455 §7.4.1).
    data.closer = {
      goAway() {
        if (data.closed) return;
        finish(data);
        upstream.close(GOING_AWAY, "backend going away");
        client.close(GOING_AWAY, "backend going away");
      },
    };
    data.backend.sockets.add(data.closer);
    const relayed = (sent: number) => {
      // The client is slow (or gone): stop reading the backend until drain().
      if (sent === -1 || client.getBufferedAmount() > HIGH_WATER_BYTES) upstream.pause();
    };
    upstream.start({
      text: (text) => relayed(client.sendText(text)),
      binary: (bytes) => relayed(client.sendBinary(bytes)),
      close(code, reason, error) {
        if (data.closed) return;
        finish(data);
        client.close(error ? 1011 : sendableCode(code), error ? "backend error" : reason);
      },
      // The backend has room again: read the client again.
      drain: () => {
        if (!data.closed) client.resume();
      },
    });
  },
  message(client: ClientSocket, message: string | Uint8Array): void {
    const { upstream } = client.data;
    const room = typeof message === "string" ? upstream.sendText(message) : upstream.sendBinary(message);
    if (!room) client.pause();
  },
  drain(client: ClientSocket): void {
    client.data.upstream.resume();
  },
  close(client: ClientSocket, code: number | undefined, reason: string): void {
    if (client.data.closed) return;
    finish(client.data);
    client.data.upstream.close(sendableCode(code), reason);
  },
};

/** Bun.serve's WebSocket handler: the relay. */
export const websocketHandler: WebSocketHandler<WsData> = {
  open: (client) => relay.open(client),
  message: (client, message) => relay.message(client, message),
  drain: (client) => relay.drain(client),
  close: (client, code, reason) => relay.close(client, code, reason),
};
