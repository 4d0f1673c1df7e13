/**
 * One traffic listener: a Bun.serve bound to the listener's address, handing
 * each request to the forwarder (a ProxiedRequest) with the Runtime current
 * at that moment.
 */
import type { Server } from "bun";
import type { ResolvedListener } from "../config/load.ts";
import type {
  ListenerContext,
  ListenerHandle,
  ListenerServer,
  ProxyDeps,
  RequestInfo,
  Runtime,
  Tracked,
} from "../contracts.ts";
import { ClientAbort } from "../proxy/client-abort.ts";
import { errorResponse } from "../proxy/errors.ts";
import { ProxiedRequest } from "../proxy/forward.ts";
import { requestTarget } from "../proxy/request-target.ts";
import { type Upgrader, upgradeWebSocket, type WsData, websocketHandler } from "../proxy/websocket.ts";
import { startH1Listener } from "./h1/listener.ts";
import { hstsValue, peerAddress, redirectToHttps, tlsOptions } from "./listener-options.ts";
import { altSvcValue, protocolLabel, servePlan } from "./protocols.ts";
import { RequestClock } from "./request-clock.ts";

function clientAddress(peer: { address: string; family: string } | null): string {
  return peerAddress(peer?.address, peer?.family === "IPv4");
}

export function startListener(
  config: ResolvedListener,
  currentRuntime: () => Runtime,
  deps: ProxyDeps,
  opts: { reusePort?: boolean } = {},
): ListenerHandle {
  if (config.engine === "tether") return startH1Listener(config, currentRuntime, deps, opts);
  const plan = servePlan(config);
  const tcp = plan.tcp ? serveHttp(config, currentRuntime, deps, opts, { ...plan.tcp, http3: false }) : null;
  let quic: Served | null = null;
  try {
    // Port 0: HTTP/3 takes the port the TCP server was given, so one number serves both.
    if (plan.quic)
      quic = serveHttp(
        config,
        currentRuntime,
        deps,
        opts,
        { http1: false, http2: false, http3: true },
        tcp?.server.port,
      );
  } catch (e) {
    tcp?.server.stop(true);
    throw e;
  }
  const altSvc = altSvcValue(config, (tcp ?? quic)?.server.port ?? config.port);
  if (tcp) tcp.altSvc = altSvc;
  if (quic) quic.altSvc = altSvc;
  const servers = [tcp, quic].filter((s): s is Served => s !== null);
  const first = servers[0] as Served;
  const server: ListenerServer = {
    get port() {
      return first.server.port;
    },
    get hostname() {
      return first.server.hostname;
    },
    get pendingRequests() {
      return servers.reduce((n, s) => n + s.server.pendingRequests, 0);
    },
    get pendingWebSockets() {
      return tcp?.server.pendingWebSockets ?? 0;
    },
    async stop(closeActiveConnections) {
      await Promise.all(servers.map((s) => s.server.stop(closeActiveConnections)));
    },
  };
  return { config, server, inflight: () => servers.reduce((n, s) => n + s.ctx.inflight, 0) };
}

/** One Bun.serve of a listener, with its own request clock (server.timeout needs the request's server). */
interface Served {
  server: Server<WsData>;
  ctx: ListenerContext;
  /** tether's Alt-Svc value for every response, or null. */
  altSvc: string | null;
}

function serveHttp(
  config: ResolvedListener,
  currentRuntime: () => Runtime,
  deps: ProxyDeps,
  opts: { reusePort?: boolean },
  versions: { http1: boolean; http2: boolean; http3: boolean },
  port = config.port,
): Served {
  const idleSeconds = Math.floor(config.clientIdleMs / 1000);
  // Suspends the idle timer and watches for the client leaving, for requests that take a while.
  const clock = new RequestClock(() => server, idleSeconds);
  const ctx: ListenerContext = {
    config,
    deps,
    tracker: clock,
    hsts: hstsValue(config),
    inflight: 0,
    protocol: protocolLabel(config, versions.http3),
  };
  const tls = tlsOptions(config);

  const server = Bun.serve<WsData>({
    hostname: config.hostname,
    port,
    reusePort: opts.reusePort ?? false,
    idleTimeout: idleSeconds,
    maxRequestBodySize: config.maxBodyBytes,
    ...(tls ? { tls: tls.length === 1 ? tls[0] : tls } : {}),
    // Only when asked for: Bun marks both experimental, and http1: false refuses HTTP/1.x clients.
    ...(versions.http2 ? { http2: true } : {}),
    ...(versions.http3 ? { http3: true } : {}),
    ...(versions.http1 ? {} : { http1: false }),
    // Bun pings an idle client and closes it at idleTimeout (seconds), as tether's own front end does.
    websocket: {
      ...websocketHandler,
      idleTimeout: Math.ceil(config.webSocketIdleMs / 1000),
      sendPings: true,
    },
    fetch(req, srv) {
      const res = answer(req, srv);
      return served.altSvc === null ? res : withAltSvc(res, served.altSvc);
    },
    error(err) {
      deps.log.error("request handler failed", { listener: config.name, error: String(err) });
      return errorResponse(500, "Internal proxy error.");
    },
  });
  const served: Served = { server, ctx, altSvc: null };

  function answer(req: Request, srv: Server<WsData>) {
    const runtime = currentRuntime();
    const url = req.url;
    const proxied = new ProxiedRequest(
      req,
      requestTarget(url),
      // Bun hands over a bare target instead of a URL when the Host is not a valid authority.
      url.charCodeAt(0) === 47,
      req.headers.toJSON(),
      ctx,
      runtime,
      clientAddress(srv.requestIP(req)),
    );
    const malformed = proxied.malformed();
    if (malformed) return malformed;
    const redirect = redirectToHttps(proxied.host, proxied.target, config);
    if (redirect) return redirect;
    if (proxied.isWebSocketUpgrade) return upgrade(req, srv, runtime, proxied.peerIp);
    return proxied.run();
  }

  /** A WebSocket upgrade: its own path (proxy/websocket.ts), off the request clock once upgraded. */
  async function upgrade(req: Request, srv: Server<WsData>, runtime: Runtime, peerIp: string) {
    const abort = new ClientAbort();
    const tracked: Tracked = {
      req,
      promoted: false,
      suspended: false,
      done: false,
      clockGeneration: null,
      clockIndex: -1,
      clientGone: (reason) => abort.abort(reason),
    };
    clock.track(tracked);
    ctx.inflight++;
    const info: RequestInfo & { signal: ClientAbort } = {
      listener: runtime.listeners.get(config.name) ?? config,
      runtime,
      peerIp,
      startedAt: performance.now(),
      responded: () => clock.finished(tracked),
      signal: abort,
    };
    try {
      const request = {
        method: req.method,
        target: requestTarget(req.url),
        fields: req.headers.toJSON(),
        headers: req.headers,
      };
      const upgrader: Upgrader = (data, headers) => srv.upgrade(req, { data, headers });
      const refused = await upgradeWebSocket(request, upgrader, info, deps);
      if (refused) clock.finished(tracked);
      else clock.detached(tracked);
      return refused;
    } finally {
      ctx.inflight--;
    }
  }

  return served;
}

/**
 * tether's own Alt-Svc on a listener with h3 (the backend's was dropped with the
 * hop-by-hop fields: it names the backend's origin). Only such listeners pay
 * for the extra step.
 */
function withAltSvc<T extends Response | undefined>(res: T | Promise<T>, value: string): T | Promise<T> {
  if (res instanceof Promise) return res.then((r) => setAltSvc(r, value));
  return setAltSvc(res, value);
}

function setAltSvc<T extends Response | undefined>(res: T, value: string): T {
  // A 101 upgrade answers with undefined: Bun has already written it.
  res?.headers.set("alt-svc", value);
  return res;
}
