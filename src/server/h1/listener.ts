/**
 * A traffic listener on tether's own HTTP/1.1 front end ("engine": "tether"):
 * Bun.listen instead of Bun.serve, so a request costs no Request, Headers,
 * URL or Response object and no getpeername: the head is parsed once into
 * what the forwarder reads, and the answer is written as bytes. The
 * forwarder (proxy/forward.ts) is the same one Bun.serve's listener runs;
 * only how the request arrives and how its answer leaves differ.
 */
import type { Socket, TCPSocketListener } from "bun";
import type { ResolvedListener } from "../../config/load.ts";
import type {
  ListenerContext,
  ListenerHandle,
  ProxyDeps,
  RequestTracker,
  Runtime,
  Tracked,
} from "../../contracts.ts";
import type { Effect } from "../../persistence/types.ts";
import { ClientAbort } from "../../proxy/client-abort.ts";
import { errorResponse } from "../../proxy/errors.ts";
import { ProxiedRequest } from "../../proxy/forward.ts";
import type { UpstreamResponse } from "../../proxy/upstream/types.ts";
import { type Upgrader, upgradeWebSocket } from "../../proxy/websocket.ts";
import { hstsValue, peerAddress, redirectToHttps, tlsOptions } from "../listener-options.ts";
import { Connection, type ConnectionHandler } from "./connection.ts";
import { type RequestHead, validAuthority } from "./request-head.ts";
import { type ClientHead, clientResponseHead, encodeHead, httpDate } from "./response-head.ts";
import { H1WebSocket, handshakeKey, switchingHead } from "./websocket.ts";

/** How often the sweep looks for connections past their deadline. */
const SWEEP_MS = 250;

/**
 * The connection tells its request when the client leaves, and a request
 * waiting on its backend holds no idle timer: the clock only marks a
 * request finished.
 */
const NO_CLOCK: RequestTracker = {
  track(): void {},
  finished(t: Tracked): void {
    t.done = true;
  },
};

/** The forwarder with its answer written to the connection instead of handed over as a Response. */
class H1Request extends ProxiedRequest {
  constructor(
    private readonly conn: Connection,
    private readonly head: RequestHead,
    ctx: ListenerContext,
    runtime: Runtime,
  ) {
    const host = head.fields.host;
    const badHost = typeof host === "string" && !validAuthority(host);
    super(head, head.target, badHost, head.fields, ctx, runtime, conn.peerIp);
  }

  protected override awaitAnswer(): undefined {
    return undefined;
  }

  protected override deliver(res: UpstreamResponse, effects: readonly Effect[]): void {
    const conn = this.conn;
    const head = clientResponseHead(res, effects, {
      method: this.method,
      minor: this.head.minor,
      close: conn.closeAfter,
      hsts: this.ctx.hsts,
    });
    if (head.close) conn.closeAfter = true;
    const body = res.body;
    if (head.framing === "whole") {
      conn.sendWhole(encodeHead(head, body as Uint8Array));
      this.responded();
      return;
    }
    if (head.framing === "none" || !(body instanceof ReadableStream)) {
      if (body instanceof ReadableStream) body.cancel().catch(ignore);
      conn.sendWhole(encodeHead(head));
      this.responded();
      return;
    }
    void this.stream(encodeHead(head), body, head.framing === "chunked");
  }

  /** A streamed answer (apart, so the common path allocates no closure scope). */
  private async stream(head: Uint8Array, body: ReadableStream<Uint8Array>, chunked: boolean): Promise<void> {
    try {
      await this.conn.sendStream(head, body, chunked);
    } catch {
      this.conn.terminate();
    } finally {
      this.responded();
    }
  }

  protected override reply(res: Response): void {
    answerWith(this.conn, res, this.method, this.head.minor, this.ctx.hsts);
  }
}

function ignore(): void {}

/** writeResponse, with a failure ending the connection rather than left unhandled. */
function answerWith(
  conn: Connection,
  res: Response,
  method: string,
  minor: number,
  hsts: string | null,
): void {
  writeResponse(conn, res, method, minor, hsts).catch(() => conn.terminate());
}

/**
 * A Response tether made itself (an error, a redirect) written to the
 * connection: the slow path, so it may wait for the body.
 */
async function writeResponse(
  conn: Connection,
  res: Response,
  method: string,
  minor: number,
  hsts: string | null,
): Promise<void> {
  const body = method === "HEAD" ? null : new Uint8Array(await res.arrayBuffer());
  const fields: string[] = [];
  for (const [name, value] of res.headers)
    if (name !== "content-length" && name !== "connection") fields.push(name, value);
  if (!res.headers.has("date")) fields.push("date", httpDate());
  if (hsts !== null && !res.headers.has("strict-transport-security"))
    fields.push("strict-transport-security", hsts);
  if (res.headers.get("connection") === "close") conn.closeAfter = true;
  const close = conn.closeAfter;
  const head: ClientHead = {
    status: res.status,
    statusText: res.statusText,
    fields,
    length: res.status === 204 || res.status === 304 ? null : (body?.length ?? 0),
    framing: body === null ? "none" : "whole",
    close,
    keepAlive: !close && minor === 0,
  };
  conn.sendWhole(encodeHead(head, body));
}

/**
 * An answer that waits for a cluster lookup first (apart, so the common
 * path allocates no closure scope).
 */
async function answerLater(
  conn: Connection,
  head: RequestHead,
  answer: Promise<Response | undefined>,
  hsts: string | null,
): Promise<void> {
  try {
    const res = await answer;
    if (res) await writeResponse(conn, res, head.method, head.minor, hsts);
  } catch {
    conn.terminate();
  }
}

export function startH1Listener(
  config: ResolvedListener,
  currentRuntime: () => Runtime,
  deps: ProxyDeps,
  opts: { reusePort?: boolean } = {},
): ListenerHandle {
  const ctx: ListenerContext = {
    config,
    deps,
    tracker: NO_CLOCK,
    hsts: hstsValue(config),
    inflight: 0,
    protocol: "http/1.1",
  };
  const settings = {
    maxHeadBytes: currentRuntime().config.maxHeaderBytes,
    maxBodyBytes: config.maxBodyBytes,
    idleMs: config.clientIdleMs,
    webSocketIdleMs: config.webSocketIdleMs,
  };
  const connections = new Set<Connection>();

  const handler: ConnectionHandler = {
    request(conn, head) {
      const runtime = currentRuntime();
      const proxied = new H1Request(conn, head, ctx, runtime);
      conn.inFlight = proxied;
      const malformed = proxied.malformed();
      if (malformed) {
        conn.closeAfter = true;
        answerWith(conn, malformed, head.method, head.minor, ctx.hsts);
        return;
      }
      const redirect = redirectToHttps(proxied.host, head.target, config);
      if (redirect !== null) {
        answerWith(conn, redirect, head.method, head.minor, ctx.hsts);
        return;
      }
      if (proxied.isWebSocketUpgrade) {
        upgrade(conn, head, runtime);
        return;
      }
      const answer = proxied.run();
      if (answer === undefined) return;
      if (answer instanceof Response) answerWith(conn, answer, head.method, head.minor, ctx.hsts);
      else void answerLater(conn, head, answer, ctx.hsts);
    },
    refuse(conn, status) {
      const text =
        status === 431
          ? "Request header fields too large."
          : status === 413
            ? "The request body is too large."
            : status === 500
              ? "Internal proxy error."
              : "The request is malformed.";
      answerWith(conn, errorResponse(status, text), "GET", 1, ctx.hsts);
    },
  };

  /** A WebSocket handshake: the relay's own path (proxy/websocket.ts), as on Bun.serve's front end. */
  function upgrade(conn: Connection, head: RequestHead, runtime: Runtime): void {
    const abort = new ClientAbort();
    conn.inFlight = { clientGone: (reason) => abort.abort(reason) };
    ctx.inflight++;
    const info = {
      listener: runtime.listeners.get(config.name) ?? config,
      runtime,
      peerIp: conn.peerIp,
      startedAt: performance.now(),
      signal: abort,
    };
    const key = handshakeKey(head);
    const upgrader: Upgrader = (data, headers) => {
      if (key === null || conn.closed) return false;
      conn.upgrade(new H1WebSocket(data, conn), Buffer.from(switchingHead(key, headers), "latin1"));
      return true;
    };
    upgradeWebSocket(head, upgrader, info, deps)
      .then((refused) => {
        if (refused) return writeResponse(conn, refused, head.method, head.minor, ctx.hsts);
      })
      .catch(() => conn.terminate())
      .finally(() => ctx.inflight--);
  }

  const tls = tlsOptions(config);
  const options = {
    hostname: config.hostname,
    port: config.port,
    ...(opts.reusePort ? { reusePort: true } : {}),
    // One certificate: Bun.listen takes no list (the config refuses several for this engine).
    ...(tls ? { tls: tls[0] } : {}),
    socket: {
      open(socket: Socket<Connection>) {
        const conn = new Connection(
          socket,
          peerAddress(socket.remoteAddress, !socket.remoteAddress.includes(":")),
          settings,
          handler,
        );
        socket.data = conn;
        connections.add(conn);
      },
      data(socket: Socket<Connection>, chunk: Uint8Array) {
        try {
          socket.data.received(chunk);
        } catch (e) {
          // A defect in tether: this client gets a 500 and its connection ends; the process goes on.
          deps.log.error("request handler failed", { listener: config.name, error: String(e) });
          socket.data.refuse(500);
        }
      },
      drain(socket: Socket<Connection>) {
        socket.data.flush();
      },
      close(socket: Socket<Connection>) {
        const conn = socket.data;
        connections.delete(conn);
        conn?.gone(new Error("client closed the connection"));
      },
      error(socket: Socket<Connection>) {
        socket.data?.gone(new Error("client connection failed"));
      },
    },
  };
  const listener: TCPSocketListener<Connection> = Bun.listen<Connection>(options);

  const sweep = setInterval(() => {
    const now = performance.now();
    for (const conn of connections) if (conn.deadline !== 0 && now > conn.deadline) conn.expire();
  }, SWEEP_MS);
  sweep.unref();

  let stopped = false;
  return {
    config,
    server: {
      get port() {
        return listener.port;
      },
      get hostname() {
        return listener.hostname;
      },
      get pendingRequests() {
        let n = 0;
        for (const conn of connections) if (conn.busy) n++;
        return n;
      },
      get pendingWebSockets() {
        let n = 0;
        for (const conn of connections) if (conn.upgraded) n++;
        return n;
      },
      stop(closeActiveConnections) {
        if (!stopped) {
          stopped = true;
          listener.stop(false);
        }
        for (const conn of connections) {
          if (closeActiveConnections) conn.terminate();
          else conn.drain();
        }
        if (closeActiveConnections || connections.size === 0) clearInterval(sweep);
      },
    },
    inflight: () => ctx.inflight,
  };
}
