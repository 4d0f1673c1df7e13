/**
 * What tether's own HTTP/1.1 front end does beyond the suites both front
 * ends run (smuggling, forwarding, persistence, streaming, slow clients,
 * WebSockets): pipelined requests, HTTP/1.0 keep-alive, limits, and the
 * WebSocket control frames it answers itself. Real sockets, real backends.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { listenerEngine } from "../../src/config/schema.ts";
import { encodeFrame, OP_CLOSE, OP_PING, OP_TEXT } from "../../src/proxy/upstream/ws-frames.ts";
import { rawExchange } from "../security/support.ts";
import { backend, type TestBackend, wsEchoBackend } from "../support/backends.ts";
import { type Running, simpleConfig, startInProcess } from "../support/tether.ts";

describe("which front end a listener gets", () => {
  test("tether's for HTTP/1.1 alone with at most one certificate, Bun.serve's otherwise or when asked", () => {
    const http = { protocol: "http", protocols: ["http/1.1"] };
    expect(listenerEngine(http)).toBe("tether");
    expect(listenerEngine({ ...http, engine: "bun" })).toBe("bun");
    expect(listenerEngine({ ...http, protocols: ["http/1.1", "h2c"] })).toBe("bun");
    const https = { protocol: "https", protocols: ["http/1.1"], tls: { certificates: [{}] } };
    expect(listenerEngine(https)).toBe("tether");
    expect(listenerEngine({ ...https, tls: { certificates: [{}, {}] } })).toBe("bun");
    expect(listenerEngine({ protocol: "tls-passthrough", protocols: ["http/1.1"] })).toBe("bun");
  });
});

describe("tether's HTTP/1.1 front end", () => {
  let app: TestBackend;
  let ws: ReturnType<typeof wsEchoBackend>;
  let proxy: Running;
  let wsProxy: Running;

  beforeAll(() => {
    app = backend("app", async (req) => {
      const url = new URL(req.url, "http://no-host");
      if (url.pathname === "/slow") await Bun.sleep(Number(url.searchParams.get("ms")));
      return new Response(`${req.method} ${url.pathname} ${req.headers.get("content-length") ?? "-"}`);
    });
    ws = wsEchoBackend("echo");
    const config = simpleConfig([app.url]);
    proxy = startInProcess({
      ...config,
      listeners: [{ ...config.listeners[0], maxBodyBytes: 1000 }],
    } as never);
    wsProxy = startInProcess(simpleConfig([`http://127.0.0.1:${ws.port}`]));
  });
  afterAll(async () => {
    await proxy.stop();
    await wsProxy.stop();
    app.stop();
    ws.stop(true);
  });

  test("the log says which front end each listener runs", () => {
    const listening = proxy.log.lines.find((l) => l.msg === "listening");
    expect(listening).toMatchObject({ name: "web", protocol: "http", engine: "tether" });
  });

  test("pipelined requests are answered in order, a slow first one holding back the rest", async () => {
    const get = (path: string) => `GET ${path} HTTP/1.1\r\nHost: shop.example\r\n\r\n`;
    const r = await rawExchange(proxy.port(), get("/slow?ms=150") + get("/b") + get("/c"), { quietMs: 400 });
    expect(r.statuses).toEqual([200, 200, 200]);
    const order = [...r.text.matchAll(/GET (\/\w+)/g)].map((m) => m[1]);
    expect(order).toEqual(["/slow", "/b", "/c"]);
  });

  test("an HTTP/1.0 client asking for keep-alive is told so and can send a second request", async () => {
    const one = "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    const r = await rawExchange(proxy.port(), [one, one], { gapMs: 100, quietMs: 300 });
    expect(r.statuses).toEqual([200, 200]);
    expect(r.text.toLowerCase()).toContain("connection: keep-alive\r\n");
  });

  test("an HTTP/1.0 request without keep-alive is answered and the connection closed", async () => {
    const r = await rawExchange(proxy.port(), "GET /a HTTP/1.0\r\n\r\n");
    expect(r.statuses).toEqual([200]);
    expect(r.closed).toBe(true);
  });

  test("a body above maxBodyBytes is refused with 413 before any of it is read, and the connection closed", async () => {
    const r = await rawExchange(
      proxy.port(),
      "POST /up HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 5000\r\n\r\n",
    );
    expect(r.statuses).toEqual([413]);
    expect(r.closed).toBe(true);
  });

  test("a body within the limit reaches the backend with its length", async () => {
    const r = await rawExchange(
      proxy.port(),
      "POST /up HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 5\r\n\r\nhello",
    );
    expect(r.statuses).toEqual([200]);
    expect(r.text).toContain("POST /up 5");
  });

  test("a HEAD request gets the head alone, and the connection carries the next request", async () => {
    const head = "HEAD /a HTTP/1.1\r\nHost: shop.example\r\n\r\n";
    const get = "GET /b HTTP/1.1\r\nHost: shop.example\r\n\r\n";
    const r = await rawExchange(proxy.port(), head + get, { quietMs: 300 });
    expect(r.statuses).toEqual([200, 200]);
    expect(r.text).toContain("GET /b -");
    expect(r.text).not.toContain("HEAD /a");
  });

  test("empty lines before a request line are ignored (RFC 9112 2.2)", async () => {
    const r = await rawExchange(proxy.port(), "\r\n\r\nGET /a HTTP/1.1\r\nHost: shop.example\r\n\r\n");
    expect(r.statuses).toEqual([200]);
  });

  test("WebSocket: a ping from the client is answered with a pong, and its messages are relayed", async () => {
    const ws = await rawWebSocket(wsProxy.port());
    expect(ws.head()).toStartWith("HTTP/1.1 101");
    // RFC 6455 1.3's example key and its accept value.
    expect(ws.head().toLowerCase()).toContain("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=");
    ws.socket.write(encodeFrame(OP_PING, Buffer.from("hi")));
    ws.socket.write(encodeFrame(OP_TEXT, "hello"));
    await ws.until((b) => b.includes("echo:hello"));
    // A pong (0x8A) carrying "hi", then the echoed message, both unmasked.
    expect(ws.frames().subarray(0, 4)).toEqual(Buffer.from([0x8a, 0x02, 0x68, 0x69]));
    ws.socket.write(encodeFrame(OP_CLOSE, Buffer.from([0x03, 0xe8])));
    // The close is echoed with its code, 1000.
    await ws.until((b) => b.includes(Buffer.from([0x88, 0x02, 0x03, 0xe8])));
    ws.socket.end();
  });

  test("WebSocket: an unmasked client frame closes the socket with 1002", async () => {
    const ws = await rawWebSocket(wsProxy.port());
    ws.socket.write(encodeFrame(OP_TEXT, "bare", null));
    await ws.until(() => ws.closed());
    expect(ws.frames().includes(Buffer.from([0x88, 0x02, 0x03, 0xea]))).toBe(true);
  });

  test("WebSocket: a quiet client is pinged halfway through webSocketIdleMs, and closed at its end if it never answers", async () => {
    const config = simpleConfig([`http://127.0.0.1:${ws.port}`]);
    const idle = startInProcess({
      ...config,
      listeners: [{ ...config.listeners[0], webSocketIdleMs: 2000 }],
    } as never);
    try {
      const silent = await rawWebSocket(idle.port());
      const started = performance.now();
      // An empty ping, unmasked (0x89 0x00), then the connection closes: the raw client never answers.
      await silent.until((b) => b.includes(Buffer.from([0x89, 0x00])));
      await silent.until(() => silent.closed());
      const after = performance.now() - started;
      expect(after).toBeGreaterThan(1500);
      expect(after).toBeLessThan(4000);
      // A client that answers pings (Bun's WebSocket does) stays open past the idle time.
      const live = new WebSocket(`ws://127.0.0.1:${idle.port()}/ws`);
      await new Promise((resolve) => live.addEventListener("open", resolve, { once: true }));
      await Bun.sleep(3000);
      expect(live.readyState).toBe(WebSocket.OPEN);
      const echoed = new Promise<string>((resolve) =>
        live.addEventListener("message", (e) => resolve(String(e.data))),
      );
      live.send("still here");
      expect(await echoed).toBe("echo:still here");
      live.close();
    } finally {
      await idle.stop();
    }
  });

  test("a handshake without a valid Sec-WebSocket-Key gets 400", async () => {
    const r = await rawExchange(
      wsProxy.port(),
      "GET /ws HTTP/1.1\r\nHost: shop.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
    );
    expect(r.statuses).toEqual([400]);
  });
});

const HANDSHAKE =
  "GET /ws HTTP/1.1\r\nHost: shop.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/** A WebSocket client on a raw socket: the 101 head and the frame bytes after it, as they came. */
async function rawWebSocket(port: number) {
  let received = Buffer.alloc(0);
  let closed = false;
  const socket = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      data(_s, d) {
        received = Buffer.concat([received, d]);
      },
      close() {
        closed = true;
      },
    },
  });
  socket.write(HANDSHAKE);
  const headEnd = () => received.indexOf("\r\n\r\n");
  const until = async (done: (frames: Buffer) => boolean) => {
    for (let i = 0; i < 200 && !(headEnd() >= 0 && done(frames())); i++) await Bun.sleep(10);
    expect(done(frames())).toBe(true);
  };
  const frames = () => received.subarray(headEnd() + 4);
  await until(() => true);
  return {
    socket,
    head: () => received.subarray(0, headEnd() + 4).toString("latin1"),
    frames,
    closed: () => closed,
    until,
  };
}
