/**
 * Slow clients (issue 8): a client that stalls mid-upload gets 408 and its
 * backend connection is closed; a client that stops reading a streamed
 * response has the backend connection closed under it; an upload that is
 * slow but keeps moving still goes through. Real sockets on port 0; every
 * wait is bounded, no assertion is on a duration.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { connect, type Socket as NetSocket } from "node:net";
import type { Socket, TCPSocketListener } from "bun";
import { backend, type TestBackend } from "../support/backends.ts";
import { ENGINES, engineLabel, onEngine, type Running, startInProcess } from "../support/tether.ts";

const IDLE_MS = 1000;
const WAIT_MS = 10_000;
const DOWNLOAD_BYTES = 64 * 1024 * 1024;

interface RawConn {
  head: string;
  closed: boolean;
}

/**
 * A raw backend that records each connection and its close. Once a request
 * head arrived it calls `onHead` (which may start answering).
 */
function recordingBackend(onHead: (socket: Socket<RawConn>) => void): {
  listener: TCPSocketListener<RawConn>;
  conns: RawConn[];
  url: string;
} {
  const conns: RawConn[] = [];
  const listener = Bun.listen<RawConn>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        s.data = { head: "", closed: false };
        conns.push(s.data);
      },
      data(s, chunk) {
        const had = s.data.head.includes("\r\n\r\n");
        s.data.head += new TextDecoder("latin1").decode(chunk);
        if (!had && s.data.head.includes("\r\n\r\n")) onHead(s);
      },
      drain(s) {
        pump(s);
      },
      close(s) {
        s.data.closed = true;
      },
      error() {},
    },
  });
  return { listener, conns, url: `http://127.0.0.1:${listener.port}` };
}

/** Streams the rest of a 64 MiB body while the socket takes it (called again on drain). */
const chunk = new Uint8Array(256 * 1024).fill(120);
const sentBy = new WeakMap<object, number>();
function pump(s: Socket<RawConn>): void {
  let sent = sentBy.get(s.data);
  if (sent === undefined) return;
  while (sent < DOWNLOAD_BYTES) {
    const n = s.write(chunk.subarray(0, Math.min(chunk.byteLength, DOWNLOAD_BYTES - sent)));
    sent += Math.max(0, n);
    if (n < chunk.byteLength) break;
  }
  sentBy.set(s.data, sent);
}

/** Resolves once check() holds; rejects after WAIT_MS. */
async function until(what: string, check: () => boolean): Promise<void> {
  const deadline = performance.now() + WAIT_MS;
  while (!check()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(20);
  }
}

function rawClient(port: number): { socket: NetSocket; received: () => string; closed: () => boolean } {
  let text = "";
  let closed = false;
  const socket = connect(port, "127.0.0.1");
  socket.on("data", (d) => {
    text += d.toString("latin1");
  });
  socket.on("error", () => {});
  socket.on("close", () => {
    closed = true;
  });
  return { socket, received: () => text, closed: () => closed };
}

for (const engine of ENGINES)
  describe(`slow clients${engineLabel(engine)}`, () => {
    let stalling: ReturnType<typeof recordingBackend>;
    let streaming: ReturnType<typeof recordingBackend>;
    let counting: TestBackend;
    let proxy: Running;

    beforeAll(() => {
      // Never answers: it waits for a body that does not come.
      stalling = recordingBackend(() => {});
      streaming = recordingBackend((s) => {
        s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${DOWNLOAD_BYTES}\r\n\r\n`);
        sentBy.set(s.data, 0);
        pump(s);
      });
      counting = backend("count", async (req) => {
        let n = 0;
        for await (const c of req.body ?? []) n += c.byteLength;
        return new Response(String(n));
      });
      const listener = { protocol: "http", address: "127.0.0.1:0", clientIdleMs: IDLE_MS };
      proxy = startInProcess(
        onEngine(
          {
            listeners: [
              { ...listener, name: "stall", pool: "stall" },
              { ...listener, name: "stream", pool: "stream" },
              { ...listener, name: "count", pool: "count" },
            ],
            pools: {
              stall: { backends: [{ id: "stall", url: stalling.url }] },
              stream: { backends: [{ id: "stream", url: streaming.url }] },
              count: { backends: [{ id: "count", url: counting.url }] },
            },
          } as Parameters<typeof startInProcess>[0],
          engine,
        ),
      );
    });

    afterAll(async () => {
      await proxy.stop();
      stalling.listener.stop(true);
      streaming.listener.stop(true);
      counting.stop();
    });

    test("a body that stops arriving gets 408 and the backend connection is closed", async () => {
      const client = rawClient(proxy.port("stall"));
      client.socket.write(
        "POST /upload HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 100\r\n\r\n0123456789",
      );
      await until("the backend to get the request", () => stalling.conns.length === 1);
      await until("a 408", () => client.received().startsWith("HTTP/1.1 408"));
      await until("the backend connection to close", () => stalling.conns[0]?.closed === true);
      client.socket.destroy();
      // The backend got the head and the part of the body that came, nothing more.
      expect(stalling.conns).toHaveLength(1);
      expect(stalling.conns[0]?.head.endsWith("\r\n\r\n0123456789")).toBe(true);
      // The client's stall is not the backend's failure.
      const stallBackend = proxy.tether.runtime.pools.get("stall")?.get("stall");
      expect(stallBackend?.errors).toBe(0);
    });

    test("a client that stops reading a streamed response has the backend connection closed", async () => {
      const client = rawClient(proxy.port("stream"));
      client.socket.pause();
      client.socket.write("GET /big HTTP/1.1\r\nHost: shop.example\r\n\r\n");
      await until("the backend to get the request", () => streaming.conns.length === 1);
      await until("the backend connection to close", () => streaming.conns[0]?.closed === true);
      // Reading again, the client finds its connection closed before the whole body.
      client.socket.resume();
      await until("the client connection to close", client.closed);
      expect(client.received().startsWith("HTTP/1.1 200")).toBe(true);
      expect(client.received().length).toBeLessThan(DOWNLOAD_BYTES);
    });

    test("an upload that is slow but keeps moving goes through", async () => {
      const chunks = 8;
      const client = rawClient(proxy.port("count"));
      client.socket.write(
        `POST /upload HTTP/1.1\r\nHost: shop.example\r\nContent-Length: ${chunks * 10}\r\n\r\n`,
      );
      for (let i = 0; i < chunks; i++) {
        await Bun.sleep(300);
        client.socket.write("0123456789");
      }
      await until("the response", () => /\r\n\r\n80$/.test(client.received()));
      expect(client.received().startsWith("HTTP/1.1 200")).toBe(true);
      client.socket.destroy();
    });
  });
