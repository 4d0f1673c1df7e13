/** Test backends: real servers on port 0. */
import type { Server, Socket, TCPSocketListener } from "bun";

export interface TestBackend {
  server: Server<undefined>;
  url: string;
  /** Requests this backend has answered. */
  hits: number;
  stop(): void;
}

/** A Bun.serve backend; `handler` defaults to answering its own name. */
export function backend(
  name: string,
  handler: (req: Request, server: Server<undefined>) => Response | Promise<Response> = () =>
    new Response(name, { headers: { "x-backend": name } }),
): TestBackend {
  const b: TestBackend = {
    hits: 0,
    server: Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      idleTimeout: 0,
      // Bun's default of 128 MB would refuse the large-upload tests' bodies.
      maxRequestBodySize: 4 * 1024 ** 3,
      fetch(req, server) {
        b.hits++;
        return handler(req, server);
      },
    }),
    url: "",
    stop: () => b.server.stop(true),
  };
  b.url = `http://127.0.0.1:${b.server.port}`;
  return b;
}

/**
 * A raw TCP backend: records the exact bytes it receives and answers with
 * whatever `respond` writes, for framing and hop-by-hop tests.
 */
export function rawBackend(respond: (socket: Socket<{ buf: string }>, received: string) => void): {
  listener: TCPSocketListener<{ buf: string }>;
  url: string;
  received: string[];
  stop(): void;
} {
  const received: string[] = [];
  const listener = Bun.listen<{ buf: string }>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        s.data = { buf: "" };
      },
      data(s, chunk) {
        s.data.buf += new TextDecoder("latin1").decode(chunk);
        const end = s.data.buf.indexOf("\r\n\r\n");
        if (end === -1) return;
        received.push(s.data.buf);
        const text = s.data.buf;
        s.data.buf = "";
        respond(s, text);
      },
    },
  });
  return { listener, url: `http://127.0.0.1:${listener.port}`, received, stop: () => listener.stop(true) };
}

/** A port that refuses connections (bound, then closed). */
export function closedPort(): number {
  const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = l.port;
  l.stop(true);
  return port;
}

/** Sends raw bytes to host:port and resolves with everything received until close or timeout. */
export async function rawRequest(port: number, bytes: string, timeoutMs = 3000): Promise<string> {
  return await new Promise((resolve) => {
    let out = "";
    const timer = setTimeout(() => resolve(out), timeoutMs);
    Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: {
        open(s) {
          s.write(bytes);
        },
        data(_s, d) {
          out += new TextDecoder("latin1").decode(d);
        },
        close() {
          clearTimeout(timer);
          resolve(out);
        },
        error() {
          clearTimeout(timer);
          resolve(out);
        },
      },
    });
  });
}

/**
 * Backends b1, b2, b3 that behave like an application with its own session
 * cookie: a request without `SID` gets a fresh `SID=<name>-<uuid>`. Each
 * answers with its name in X-Backend.
 */
export function sessionBackends(names = ["b1", "b2", "b3"]): TestBackend[] {
  return names.map((name) =>
    backend(name, (req) => {
      const headers = new Headers({ "x-backend": name });
      if (!(req.headers.get("cookie") ?? "").includes("SID="))
        headers.append("set-cookie", `SID=${name}-${crypto.randomUUID()}; Path=/`);
      return new Response(name, { headers });
    }),
  );
}

/** A backend answering its name (and x-backend) over HTTP and echoing "<name>:<message>" over WebSocket. */
export function wsEchoBackend(name: string, hostname = "127.0.0.1", port = 0): Server<undefined> {
  return Bun.serve({
    hostname,
    port,
    fetch(req, srv) {
      if (req.headers.get("upgrade") === "websocket" && srv.upgrade(req)) return undefined;
      return new Response(name, { headers: { "x-backend": name } });
    },
    websocket: {
      message(ws, msg) {
        ws.send(`${name}:${msg}`);
      },
    },
  });
}

/**
 * A GET through tether on a connection of its own (so every worker thread
 * answers some), with an optional Cookie: the backend that answered
 * (x-backend) and the TETHER cookie set, if any.
 */
export async function getOnFreshConnection(
  port: number,
  cookie?: string,
): Promise<{ backend: string | null; cookie: string | null }> {
  const raw = await rawRequest(
    port,
    `GET / HTTP/1.1\r\nHost: x\r\n${cookie ? `Cookie: ${cookie}\r\n` : ""}Connection: close\r\n\r\n`,
  );
  return {
    backend: /x-backend: ([\w.]+)/i.exec(raw)?.[1] ?? null,
    cookie: /set-cookie: (TETHER=[^;\r\n]+)/i.exec(raw)?.[1] ?? null,
  };
}
