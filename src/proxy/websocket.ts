/**
 * WebSocket proxying. The backend connection is opened first, so the backend
 * chooses the subprotocol and a backend that refuses the upgrade answers the
 * client with an error instead of an accepted-then-dropped socket. Frames are
 * relayed as they are; each side pauses the other when its buffer fills.
 */
import type { Server, ServerWebSocket, WebSocketHandler } from "bun";
import type { ProxyDeps, RequestInfo } from "../contracts.ts";
import { Placing } from "../pool/placement.ts";
import type { Pool } from "../pool/pool.ts";
import { errorResponse, ProxyError, proxyErrorResponse } from "./errors.ts";
import { backendRequestHeaders } from "./headers.ts";
import { forwardFacts, poolFor, requestFacts } from "./request-facts.ts";
import { requestTarget } from "./request-target.ts";
import type { UpstreamTarget } from "./upstream/types.ts";

/** Pause the sending side when the receiving side holds more than this. */
const HIGH_WATER_BYTES = 1024 * 1024;
const BACKPRESSURE_POLL_MS = 5;

export interface WsData {
  kind: "proxy";
  backend: WebSocket;
  /** Frames the backend sent before the client side finished its upgrade. */
  early: (string | ArrayBuffer)[];
  closed: boolean;
}

/** Headers that belong to the client's own handshake; the backend handshake makes its own. */
const HANDSHAKE = new Set([
  "sec-websocket-key",
  "sec-websocket-version",
  "sec-websocket-extensions",
  "sec-websocket-protocol",
  "connection",
  "upgrade",
]);

export const isWebSocketUpgrade = (req: Request) =>
  req.method === "GET" && req.headers.get("upgrade")?.toLowerCase() === "websocket";

/** 1005 and 1006 are reserved for "no code" and "abnormal" and may not be sent (RFC 6455 §7.4.1). */
function sendableCode(code: number | undefined): number {
  if (code === undefined || code === 1005 || code === 1006 || code === 1015) return 1000;
  return code;
}

function openBackend(
  url: string,
  headers: Record<string, string>,
  protocols: string[],
  pool: Pool,
  tls: UpstreamTarget["tls"],
) {
  return new Promise<WebSocket>((resolve, reject) => {
    // Bun accepts an options object here; the DOM lib's constructor type (protocols only) wins in tsc,
    // so the object is checked against Bun.WebSocketOptions and then passed through the DOM signature.
    const ws = new WebSocket(url, {
      headers,
      ...(protocols.length ? { protocols } : {}),
      ...(tls
        ? {
            tls: {
              rejectUnauthorized: tls.verify,
              ...(tls.ca ? { ca: tls.ca } : {}),
              ...(tls.serverName ? { serverName: tls.serverName } : {}),
            },
          }
        : {}),
    } satisfies Bun.WebSocketOptions as unknown as string[]);
    ws.binaryType = "arraybuffer";
    const limit = pool.settings.connectTimeoutMs + (pool.settings.responseTimeoutMs || 30_000);
    const timer = setTimeout(() => {
      ws.close();
      reject(new ProxyError("RESPONSE_TIMEOUT", "websocket handshake"));
    }, limit);
    ws.onopen = () => {
      clearTimeout(timer);
      resolve(ws);
    };
    ws.onerror = () => {
      clearTimeout(timer);
      reject(new ProxyError("CONNECT_FAILED", "websocket handshake failed"));
    };
  });
}

export async function upgradeWebSocket(
  req: Request,
  server: Server<WsData>,
  info: RequestInfo,
  deps: ProxyDeps,
): Promise<Response | undefined> {
  const target = requestTarget(req.url);
  let pool: Pool;
  try {
    pool = poolFor(req, target, info);
  } catch (e) {
    return proxyErrorResponse(e as ProxyError);
  }
  const protocols = (req.headers.get("sec-websocket-protocol") ?? "")
    .split(",")
    .map((p) => p.trim())
    .filter(Boolean);

  const facts = requestFacts(req, target, info);
  const headers: Record<string, string> = {};
  const cookie = facts.cookie === null ? null : pool.chain.backendCookie(facts.cookie);
  for (const [name, value] of backendRequestHeaders(req.headers, forwardFacts(req, info), false, cookie)) {
    if (!HANDSHAKE.has(name)) headers[name] = value;
  }
  const placing = new Placing(pool, facts, info.listener.name, deps);
  await placing.prefetch();
  let placement = placing.start();
  let tried = 0;
  for (let attempt = 0; placement && attempt <= pool.settings.retries; attempt++) {
    const backend = placing.backendOf(placement);
    tried++;
    const t = backend.target;
    const host = t.hostname.includes(":") ? `[${t.hostname}]` : t.hostname;
    const url = `${t.tls ? "wss" : "ws"}://${host}:${t.port}${target}`;
    let ws: WebSocket;
    try {
      ws = await openBackend(url, headers, protocols, pool, t.tls);
    } catch (e) {
      deps.log.warn("websocket upstream failed", {
        pool: pool.name,
        backend: backend.id,
        code: (e as ProxyError).code,
      });
      placement = placing.next(placement);
      continue;
    }
    const data: WsData = { kind: "proxy", backend: ws, early: [], closed: false };
    ws.onmessage = (ev) => data.early.push(ev.data as string | ArrayBuffer);
    const upgradeHeaders = new Headers(ws.protocol ? { "sec-websocket-protocol": ws.protocol } : {});
    const noResponse = {
      setCookies: [],
      location: null,
      cacheControl: null,
      secure: info.listener.protocol === "https",
    };
    for (const e of pool.chain.remember(facts, placement, noResponse)) {
      if (e.kind === "set-cookie") upgradeHeaders.append("set-cookie", e.header);
    }
    if (!server.upgrade(req, { data, headers: upgradeHeaders })) {
      ws.close(1011, "client upgrade failed");
      return errorResponse(400, "The WebSocket upgrade request is malformed.");
    }
    placing.settle(placement);
    if (info.runtime.config.accessLog) {
      deps.log.info("websocket", {
        listener: info.listener.name,
        client: info.peerIp,
        pool: pool.name,
        backend: backend.id,
      });
    }
    return undefined;
  }
  return proxyErrorResponse(new ProxyError(tried ? "CONNECT_FAILED" : "NO_BACKEND"));
}

/** Relays frames between the client socket and its backend socket. */
export const websocketHandler: WebSocketHandler<WsData> = {
  open(client) {
    const { backend } = client.data;
    const forward = (payload: string | ArrayBuffer) => {
      client.send(payload);
      // The client is slow: stop reading the backend until drain().
      if (client.getBufferedAmount() > HIGH_WATER_BYTES) backend.pause();
    };
    for (const frame of client.data.early) forward(frame);
    client.data.early = [];
    backend.onmessage = (ev) => forward(ev.data as string | ArrayBuffer);
    backend.onclose = (ev) => {
      if (client.data.closed) return;
      client.data.closed = true;
      client.close(sendableCode(ev.code), ev.reason);
    };
    backend.onerror = () => {
      if (client.data.closed) return;
      client.data.closed = true;
      client.close(1011, "backend error");
    };
    if (backend.readyState !== WebSocket.OPEN) {
      client.data.closed = true;
      client.close(1011, "backend closed");
    }
  },
  message(client, message) {
    const { backend } = client.data;
    if (backend.readyState !== WebSocket.OPEN) return;
    backend.send(message);
    if (backend.bufferedAmount > HIGH_WATER_BYTES) pauseUntilDrained(client, backend);
  },
  drain(client) {
    client.data.backend.resume();
  },
  close(client, code, reason) {
    if (client.data.closed) return;
    client.data.closed = true;
    client.data.backend.close(sendableCode(code), reason);
  },
};

/** The client WebSocket API has no drain event, so poll bufferedAmount while the client is paused. */
function pauseUntilDrained(client: ServerWebSocket<WsData>, backend: WebSocket) {
  client.pause();
  const timer = setInterval(() => {
    if (backend.readyState !== WebSocket.OPEN || backend.bufferedAmount < HIGH_WATER_BYTES / 2) {
      clearInterval(timer);
      if (!client.data.closed) client.resume();
    }
  }, BACKPRESSURE_POLL_MS);
}
