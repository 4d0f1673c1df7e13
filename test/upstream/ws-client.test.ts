import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import type { Server, Socket } from "bun";
import { ProxyError } from "../../src/proxy/errors.ts";
import {
  openUpstreamWebSocket,
  type UpstreamWebSocket,
  type WebSocketOptions,
  type WebSocketUpgrade,
} from "../../src/proxy/upstream/ws-client.ts";
import {
  closePayload,
  encodeFrame,
  FrameDecoder,
  OP_BINARY,
  OP_CLOSE,
  OP_TEXT,
} from "../../src/proxy/upstream/ws-frames.ts";
import { acceptFor } from "../../src/proxy/upstream/ws-handshake.ts";
import { type Cert, refusedPort, selfSignedCert, target, text, until } from "./helpers.ts";

const OPTS: WebSocketOptions = { connectTimeoutMs: 2000, responseTimeoutMs: 5000 };

type Event =
  | { kind: "text"; data: string }
  | { kind: "binary"; data: Uint8Array }
  | { kind: "ping" | "pong"; data: string }
  | { kind: "close"; code: number; reason: string; error: string | null };

/** Starts a connection with a handler that queues what it reports; next() takes the next event. */
function listen(ws: UpstreamWebSocket) {
  const events: Event[] = [];
  let wake: (() => void) | null = null;
  const push = (e: Event) => {
    events.push(e);
    wake?.();
  };
  let drains = 0;
  ws.start({
    text: (data) => push({ kind: "text", data }),
    binary: (data) => push({ kind: "binary", data: new Uint8Array(data) }),
    ping: (p) => push({ kind: "ping", data: Buffer.from(p).toString() }),
    pong: (p) => push({ kind: "pong", data: Buffer.from(p).toString() }),
    close: (code, reason, error) => push({ kind: "close", code, reason, error }),
    drain: () => drains++,
  });
  return {
    get drains() {
      return drains;
    },
    async next(): Promise<Event> {
      while (events.length === 0) await new Promise<void>((r) => (wake = r));
      return events.shift() as Event;
    },
  };
}

async function open(port: number, path = "/", headers: [string, string][] = [], opts = OPTS) {
  const upgrade = await openUpstreamWebSocket(target(port), { target: path, headers }, opts);
  if (upgrade.kind !== "open") throw new Error(`expected 101, got ${upgrade.response.status}`);
  sockets.push(upgrade.connection);
  return upgrade;
}

async function failure(p: Promise<unknown>): Promise<ProxyError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof ProxyError) return err;
    throw err;
  }
  throw new Error("expected a ProxyError");
}

const sockets: UpstreamWebSocket[] = [];
const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const ws of sockets.splice(0)) ws.abort();
  for (const cleanup of cleanups.splice(0)) cleanup();
});

interface BackendData {
  headers: Record<string, string>;
}

/** Echoes messages; a text "close:CODE:REASON" makes it close, "ping:X" makes it ping. */
function echoBackend(tls?: { key: string; cert: string }) {
  const seen = { closes: [] as [number, string][], pongs: [] as string[] };
  const server: Server<BackendData> = Bun.serve<BackendData>({
    hostname: "127.0.0.1",
    port: 0,
    tls,
    fetch(req, srv) {
      const url = new URL(req.url);
      if (url.pathname === "/refuse") {
        return new Response("token required\n", {
          status: 401,
          statusText: "Unauthorized",
          headers: { "www-authenticate": 'Bearer realm="app"', "x-reason": "no token" },
        });
      }
      const offer = req.headers.get("sec-websocket-protocol");
      const protocol = offer?.split(",").pop()?.trim();
      const ok = srv.upgrade(req, {
        data: { headers: Object.fromEntries(req.headers) },
        headers: protocol ? { "sec-websocket-protocol": protocol } : {},
      });
      return ok ? undefined : new Response("upgrade failed", { status: 400 });
    },
    websocket: {
      maxPayloadLength: 16 * 1024 * 1024,
      open(ws) {
        if (ws.data.headers["x-greet"]) ws.send(`hello ${ws.data.headers["x-greet"]}`);
      },
      message(ws, message) {
        if (typeof message === "string" && message.startsWith("close:")) {
          const [, code, reason] = message.split(":");
          ws.close(Number(code), reason);
        } else if (typeof message === "string" && message.startsWith("ping:")) {
          ws.ping(message.slice(5));
        } else if (typeof message === "string" && message === "headers") {
          ws.send(JSON.stringify(ws.data.headers));
        } else {
          ws.send(message);
        }
      },
      pong(_ws, data) {
        seen.pongs.push(Buffer.from(data).toString());
      },
      close(_ws, code, reason) {
        seen.closes.push([code, reason]);
      },
    },
  });
  return { server, seen, port: server.port as number };
}

describe("against a Bun.serve backend", () => {
  let backend: ReturnType<typeof echoBackend>;
  beforeAll(() => {
    backend = echoBackend();
  });
  afterAll(() => backend.server.stop(true));

  test("text and binary messages go both ways", async () => {
    const { connection } = await open(backend.port);
    const events = listen(connection);
    expect(connection.sendText("hello ✓")).toBe(true);
    expect(await events.next()).toEqual({ kind: "text", data: "hello ✓" });
    connection.sendBinary(new Uint8Array([0, 1, 255]));
    expect(await events.next()).toEqual({ kind: "binary", data: new Uint8Array([0, 1, 255]) });
  });

  test("the request carries the caller's headers, Host and no extension offer", async () => {
    const { connection } = await open(backend.port, "/chat?room=1", [["X-Forwarded-For", "10.1.2.3"]]);
    const events = listen(connection);
    connection.sendText("headers");
    const seen = JSON.parse(((await events.next()) as { data: string }).data);
    expect(seen["x-forwarded-for"]).toBe("10.1.2.3");
    expect(seen.host).toBe(`127.0.0.1:${backend.port}`);
    expect(seen["sec-websocket-version"]).toBe("13");
    expect(seen["sec-websocket-extensions"]).toBeUndefined();
  });

  test("the backend's choice of subprotocol is returned", async () => {
    const upgrade = await open(backend.port, "/", [["Sec-WebSocket-Protocol", "chat, superchat"]]);
    expect(upgrade.protocol).toBe("superchat");
  });

  test("a message the backend sends right after the 101 waits for start()", async () => {
    const { connection } = await open(backend.port, "/", [["X-Greet", "early"]]);
    const events = listen(connection);
    expect(await events.next()).toEqual({ kind: "text", data: "hello early" });
  });

  test("messages over 1 MiB arrive whole, both ways", async () => {
    const { connection } = await open(backend.port);
    const events = listen(connection);
    const big = new Uint8Array(3 * 1024 * 1024 + 5);
    for (let i = 0; i < big.length; i++) big[i] = (i * 31) & 0xff;
    connection.sendBinary(big);
    const echoed = (await events.next()) as { kind: "binary"; data: Uint8Array };
    expect(echoed.kind).toBe("binary");
    expect(echoed.data.length).toBe(big.length);
    expect(Buffer.compare(echoed.data, big)).toBe(0);
    const bigText = "é".repeat(700_000);
    connection.sendText(bigText);
    expect(await events.next()).toEqual({ kind: "text", data: bigText });
  });

  test("a ping is answered by the backend; a backend ping is answered and reported", async () => {
    const { connection } = await open(backend.port);
    const events = listen(connection);
    connection.ping(Buffer.from("are you there"));
    expect(await events.next()).toEqual({ kind: "pong", data: "are you there" });
    connection.sendText("ping:from backend");
    expect(await events.next()).toEqual({ kind: "ping", data: "from backend" });
    await until(() => backend.seen.pongs.includes("from backend"));
  });

  test("the backend's close code and reason are reported", async () => {
    const { connection } = await open(backend.port);
    const events = listen(connection);
    connection.sendText("close:4001:asked to");
    expect(await events.next()).toEqual({ kind: "close", code: 4001, reason: "asked to", error: null });
    expect(connection.writable).toBe(false);
    expect(connection.sendText("late")).toBe(false);
  });

  test("close() sends tether's code and reason and completes the handshake", async () => {
    const { connection } = await open(backend.port);
    const events = listen(connection);
    connection.close(4000, "bye");
    const closed = await events.next();
    expect(closed).toMatchObject({ kind: "close", code: 4000, error: null });
    await until(() => backend.seen.closes.some(([code, reason]) => code === 4000 && reason === "bye"));
  });

  test("a refused upgrade is returned whole: status, headers and body", async () => {
    const upgrade = await openUpstreamWebSocket(
      target(backend.port),
      { target: "/refuse", headers: [] },
      OPTS,
    );
    expect(upgrade.kind).toBe("refused");
    const { response } = upgrade as Extract<WebSocketUpgrade, { kind: "refused" }>;
    expect(response.status).toBe(401);
    expect(response.statusText).toBe("Unauthorized");
    const headers = new Map(response.headers.map(([n, v]) => [n.toLowerCase(), v]));
    expect(headers.get("www-authenticate")).toBe('Bearer realm="app"');
    expect(headers.get("x-reason")).toBe("no token");
    expect(await text(response.body)).toBe("token required\n");
  });

  test("an aborted handshake rejects with the signal's reason", async () => {
    const controller = new AbortController();
    const p = openUpstreamWebSocket(
      target(backend.port),
      { target: "/", headers: [] },
      { ...OPTS, signal: controller.signal },
    );
    controller.abort(new Error("client left"));
    await expect(p).rejects.toThrow("client left");
  });
});

describe("TLS backends", () => {
  let cert: Cert;
  let backend: ReturnType<typeof echoBackend>;
  beforeAll(async () => {
    cert = await selfSignedCert();
    backend = echoBackend({ key: cert.key, cert: cert.cert });
  });
  afterAll(() => {
    backend.server.stop(true);
    cert.cleanup();
  });

  test("wss with the backend's CA: messages flow", async () => {
    const t = target(backend.port, { verify: true, ca: cert.cert, serverName: "localhost" });
    const upgrade = await openUpstreamWebSocket(t, { target: "/", headers: [] }, OPTS);
    if (upgrade.kind !== "open") throw new Error("expected 101");
    sockets.push(upgrade.connection);
    const events = listen(upgrade.connection);
    upgrade.connection.sendText("over tls");
    expect(await events.next()).toEqual({ kind: "text", data: "over tls" });
  });

  test("an untrusted certificate is CONNECT_FAILED", async () => {
    const t = target(backend.port, { verify: true });
    const err = await failure(openUpstreamWebSocket(t, { target: "/", headers: [] }, OPTS));
    expect(err.code).toBe("CONNECT_FAILED");
  });
});

// --- raw backends that send exact bytes ----------------------------------------

interface RawWs {
  socket: Socket<RawState>;
  /** The key the client sent. */
  key: string;
  head: string;
}
interface RawState {
  buf: Buffer;
  headDone: boolean;
  /** Bytes the client sent after its request head (its frames). */
  after: Buffer;
}

/** A Bun.listen backend: onHead gets each upgrade request and writes what it likes. */
function rawBackend(onHead: (ws: RawWs) => void) {
  const conns: RawState[] = [];
  const listener = Bun.listen<RawState>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(socket) {
        socket.data = { buf: Buffer.alloc(0), headDone: false, after: Buffer.alloc(0) };
        conns.push(socket.data);
      },
      data(socket, data) {
        const state = socket.data;
        if (state.headDone) {
          state.after = Buffer.concat([state.after, data]);
          return;
        }
        state.buf = Buffer.concat([state.buf, data]);
        const end = state.buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        state.headDone = true;
        state.after = state.buf.subarray(end + 4);
        const head = state.buf.subarray(0, end).toString("latin1");
        const key = /\r\nsec-websocket-key: *([^\r]+)/i.exec(head)?.[1] ?? "";
        onHead({ socket, key, head });
      },
    },
  });
  cleanups.push(() => listener.stop(true));
  return { port: listener.port, conns };
}

const switching = (key: string, extra = "") =>
  `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptFor(key)}\r\n${extra}\r\n`;

/** Decodes the frames a raw backend received from the client. */
function clientFrames(after: Uint8Array) {
  const events: unknown[] = [];
  new FrameDecoder({ maxMessageBytes: 1 << 20, expectMasked: true }).push(after, {
    text: (d) => events.push(["text", d]),
    binary: (d) => events.push(["binary", d.length]),
    ping: () => events.push(["ping"]),
    pong: (p) => events.push(["pong", Buffer.from(p).toString()]),
    close: (code, reason) => events.push(["close", code, reason]),
  });
  return events;
}

describe("against raw backends", () => {
  test.each([
    { what: "a wrong accept key", answer: () => switching("not-the-key") },
    {
      what: "a 101 without Upgrade",
      answer: (key: string) => switching(key).replace("Upgrade: websocket\r\n", ""),
    },
    {
      what: "an extension never offered",
      answer: (key: string) => switching(key, "Sec-WebSocket-Extensions: permessage-deflate\r\n"),
    },
    {
      what: "a subprotocol never offered",
      answer: (key: string) => switching(key, "Sec-WebSocket-Protocol: chat\r\n"),
    },
    { what: "garbage instead of HTTP", answer: () => "SSH-2.0-OpenSSH_9.6\r\n\r\n" },
  ])("$what is BAD_RESPONSE, not a relayed answer", async ({ answer }) => {
    const { port } = rawBackend(({ socket, key }) => socket.write(answer(key)));
    const err = await failure(openUpstreamWebSocket(target(port), { target: "/", headers: [] }, OPTS));
    expect(err.code).toBe("BAD_RESPONSE");
  });

  test("interim 1xx answers before the 101 are skipped", async () => {
    const { port } = rawBackend(({ socket, key }) =>
      socket.write(`HTTP/1.1 100 Continue\r\n\r\n${switching(key)}`),
    );
    const upgrade = await open(port);
    expect(upgrade.kind).toBe("open");
  });

  test("frames in the same packet as the 101 belong to the stream", async () => {
    const { port } = rawBackend(({ socket, key }) => {
      socket.write(
        Buffer.concat([
          Buffer.from(switching(key)),
          encodeFrame(OP_TEXT, "first", null),
          encodeFrame(OP_BINARY, new Uint8Array([9]), null),
        ]),
      );
    });
    const { connection } = await open(port);
    const events = listen(connection);
    expect(await events.next()).toEqual({ kind: "text", data: "first" });
    expect(await events.next()).toEqual({ kind: "binary", data: new Uint8Array([9]) });
  });

  test("a masked frame from the backend fails the connection with 1002", async () => {
    const { port, conns } = rawBackend(({ socket, key }) => {
      socket.write(Buffer.concat([Buffer.from(switching(key)), encodeFrame(OP_TEXT, "masked", "random")]));
    });
    const { connection } = await open(port);
    const events = listen(connection);
    expect(await events.next()).toEqual({
      kind: "close",
      code: 1006,
      reason: "",
      error: "masked frame from a server",
    });
    await until(() => clientFrames((conns[0] as RawState).after).length > 0);
    expect(clientFrames((conns[0] as RawState).after)).toEqual([["close", 1002, ""]]);
  });

  test("a backend that closes without a Close frame is reported as 1006 with an error", async () => {
    const { port } = rawBackend(({ socket, key }) => {
      socket.write(switching(key));
      socket.end();
    });
    const { connection } = await open(port);
    const events = listen(connection);
    const closed = await events.next();
    expect(closed).toMatchObject({ kind: "close", code: 1006 });
    expect((closed as { error: string | null }).error).not.toBeNull();
  });

  test("the backend's Close is echoed with its code", async () => {
    const { port, conns } = rawBackend(({ socket, key }) => {
      socket.write(
        Buffer.concat([
          Buffer.from(switching(key)),
          encodeFrame(OP_CLOSE, closePayload(1001, "restart"), null),
        ]),
      );
    });
    const { connection } = await open(port);
    const events = listen(connection);
    expect(await events.next()).toEqual({ kind: "close", code: 1001, reason: "restart", error: null });
    await until(() => clientFrames((conns[0] as RawState).after).length > 0);
    expect(clientFrames((conns[0] as RawState).after)).toEqual([["close", 1001, ""]]);
  });

  test("a refusal with a chunked body is read whole", async () => {
    const { port } = rawBackend(({ socket }) => {
      socket.write(
        "HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\nX-Why: origin\r\n\r\n4\r\nno, \r\n",
      );
      socket.write("7\r\nnot you\r\n0\r\n\r\n");
    });
    const upgrade = await openUpstreamWebSocket(target(port), { target: "/", headers: [] }, OPTS);
    if (upgrade.kind !== "refused") throw new Error("expected a refusal");
    expect(upgrade.response.status).toBe(403);
    expect(upgrade.response.headers).toContainEqual(["X-Why", "origin"]);
    expect(await text(upgrade.response.body)).toBe("no, not you");
  });

  test("a refusal with no body has body null", async () => {
    const { port } = rawBackend(({ socket }) =>
      socket.write("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
    );
    const upgrade = await openUpstreamWebSocket(target(port), { target: "/", headers: [] }, OPTS);
    expect(upgrade).toMatchObject({ kind: "refused", response: { status: 404, body: null } });
  });

  test("a refusal body over maxRefusalBytes is BAD_RESPONSE", async () => {
    const { port } = rawBackend(({ socket }) =>
      socket.write(`HTTP/1.1 404 Not Found\r\nContent-Length: 100\r\n\r\n${"x".repeat(100)}`),
    );
    const err = await failure(
      openUpstreamWebSocket(target(port), { target: "/", headers: [] }, { ...OPTS, maxRefusalBytes: 99 }),
    );
    expect(err.code).toBe("BAD_RESPONSE");
  });

  test("a backend that closes before answering is RESET_BEFORE_RESPONSE", async () => {
    const { port } = rawBackend(({ socket }) => socket.end());
    const err = await failure(openUpstreamWebSocket(target(port), { target: "/", headers: [] }, OPTS));
    expect(err.code).toBe("RESET_BEFORE_RESPONSE");
  });

  test("a backend that closes mid-head is BAD_RESPONSE", async () => {
    const { port } = rawBackend(({ socket }) => {
      socket.write("HTTP/1.1 101 Switching");
      socket.end();
    });
    const err = await failure(openUpstreamWebSocket(target(port), { target: "/", headers: [] }, OPTS));
    expect(err.code).toBe("BAD_RESPONSE");
  });

  test("a backend that never answers is RESPONSE_TIMEOUT", async () => {
    const { port } = rawBackend(() => {});
    const err = await failure(
      openUpstreamWebSocket(target(port), { target: "/", headers: [] }, { ...OPTS, responseTimeoutMs: 50 }),
    );
    expect(err.code).toBe("RESPONSE_TIMEOUT");
  });

  test("nothing listening is CONNECT_FAILED, safe to retry", async () => {
    const err = await failure(
      openUpstreamWebSocket(target(refusedPort()), { target: "/", headers: [] }, OPTS),
    );
    expect(err.code).toBe("CONNECT_FAILED");
    expect(err.safeToRetry).toBe(true);
  });

  test("a CR or LF in a header is BAD_REQUEST before connecting", async () => {
    const err = await failure(
      openUpstreamWebSocket(target(1), { target: "/", headers: [["X-Bad", "a\r\nInjected: 1"]] }, OPTS),
    );
    expect(err.code).toBe("BAD_REQUEST");
  });

  test("a backend that stops reading builds up bufferedAmount, and drain reports when it is gone", async () => {
    let backendSocket: Socket<RawState> | null = null;
    const { port } = rawBackend(({ socket, key }) => {
      backendSocket = socket;
      socket.write(switching(key));
      socket.pause();
    });
    const { connection } = await open(port);
    const events = listen(connection);
    const chunk = new Uint8Array(1024 * 1024);
    let sent = 0;
    while (connection.sendBinary(chunk) && sent < 64) sent++;
    expect(connection.bufferedAmount).toBeGreaterThan(0);
    (backendSocket as unknown as Socket<RawState>).resume();
    await until(() => events.drains > 0, 10_000);
    expect(connection.bufferedAmount).toBe(0);
  });
});
