/**
 * WebSocket upgrades through tether to a real WebSocket backend.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Server } from "bun";
import { closedPort } from "../support/backends.ts";
import {
  ENGINES,
  engineLabel,
  onEngine,
  type Running,
  simpleConfig,
  startInProcess,
} from "../support/tether.ts";

function open(url: string, protocols?: string[]): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, protocols);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => resolve(ws);
    ws.onerror = () => reject(new Error("websocket failed to open"));
  });
}

function next(ws: WebSocket): Promise<MessageEvent> {
  return new Promise((resolve) => ws.addEventListener("message", resolve, { once: true }));
}

for (const engine of ENGINES)
  describe(`websocket proxying${engineLabel(engine)}`, () => {
    let echo: Server<{ path: string }>;
    let proxy: Running;
    let lastBackendClose: { code: number; reason: string } | null = null;

    beforeAll(() => {
      echo = Bun.serve<{ path: string }>({
        hostname: "127.0.0.1",
        port: 0,
        fetch(req, srv) {
          const offered = (req.headers.get("sec-websocket-protocol") ?? "").split(",").map((s) => s.trim());
          // The backend, not the proxy, chooses the subprotocol.
          const chosen = offered.includes("chat.v2") ? "chat.v2" : undefined;
          const ok = srv.upgrade(req, {
            data: { path: new URL(req.url).pathname },
            headers: chosen ? { "sec-websocket-protocol": chosen } : {},
          });
          return ok ? undefined : new Response("not a websocket", { status: 400 });
        },
        websocket: {
          message(ws, msg) {
            if (msg === "close-me") return ws.close(4001, "backend says bye");
            ws.send(msg);
          },
          close(_ws, code, reason) {
            lastBackendClose = { code, reason };
          },
        },
      });
      proxy = startInProcess(onEngine(simpleConfig([`http://127.0.0.1:${echo.port}`]), engine));
    });
    afterAll(async () => {
      await proxy.stop();
      echo.stop(true);
    });

    const wsUrl = () => proxy.url().replace("http:", "ws:");

    test("text and binary frames are relayed both ways", async () => {
      const ws = await open(`${wsUrl()}/chat`);
      ws.send("hello");
      expect((await next(ws)).data).toBe("hello");
      const bytes = new Uint8Array([0, 1, 2, 255]);
      ws.send(bytes);
      expect(new Uint8Array((await next(ws)).data as ArrayBuffer)).toEqual(bytes);
      ws.close();
    });

    test("the backend chooses the subprotocol", async () => {
      const ws = await open(`${wsUrl()}/`, ["chat.v1", "chat.v2"]);
      expect(ws.protocol).toBe("chat.v2");
      ws.close();
    });

    test("a close code from the backend reaches the client", async () => {
      const ws = await open(`${wsUrl()}/`);
      const closed = new Promise<CloseEvent>((r) => (ws.onclose = r));
      ws.send("close-me");
      const ev = await closed;
      expect(ev.code).toBe(4001);
      expect(ev.reason).toBe("backend says bye");
    });

    test("a close code from the client reaches the backend", async () => {
      const ws = await open(`${wsUrl()}/`);
      ws.close(4002, "client says bye");
      for (let i = 0; i < 100 && lastBackendClose?.code !== 4002; i++) await Bun.sleep(10);
      expect(lastBackendClose).toEqual({ code: 4002, reason: "client says bye" });
    });

    test("many large messages arrive complete and in order", async () => {
      const ws = await open(`${wsUrl()}/`);
      const n = 50;
      const received: number[] = [];
      const done = new Promise<void>((resolve) => {
        ws.onmessage = (ev) => {
          const view = new Uint8Array(ev.data as ArrayBuffer);
          received.push(view[0] as number);
          if (received.length === n) resolve();
        };
      });
      for (let i = 0; i < n; i++) {
        const msg = new Uint8Array(256 * 1024).fill(i);
        ws.send(msg);
      }
      await done;
      expect(received).toEqual([...Array(n).keys()]);
      ws.close();
    });

    test("an unreachable backend fails the upgrade with 502", async () => {
      const p = startInProcess(
        onEngine(simpleConfig([`http://127.0.0.1:${closedPort()}`], {}, { retries: 0 }), engine),
      );
      try {
        const res = await fetch(`${p.url()}/`, {
          headers: {
            upgrade: "websocket",
            connection: "Upgrade",
            "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
            "sec-websocket-version": "13",
          },
        });
        expect(res.status).toBe(502);
      } finally {
        await p.stop();
      }
    });
  });
