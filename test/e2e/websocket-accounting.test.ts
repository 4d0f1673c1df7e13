/**
 * WebSockets as backend load: a refused upgrade reaches the client as the
 * backend sent it; an open socket counts on its backend until it closes,
 * under maxWebSockets and never in maxConn; passive health sees handshakes.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { Server } from "bun";
import type { ConfigInput } from "../../src/config/schema.ts";
import {
  ENGINES,
  type Engine,
  engineLabel,
  onEngine,
  type Running,
  startInProcess,
} from "../support/tether.ts";

const TOKEN = "ws-accounting-token";
let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

/** A WebSocket backend that answers its name to every message; `refuse` answers the upgrade instead. */
function wsBackend(name: string, refuse?: () => Response): Server<undefined> & { upgrades: number } {
  const counter = { upgrades: 0 };
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req, srv) {
      if (refuse) return refuse();
      counter.upgrades++;
      return srv.upgrade(req) ? undefined : new Response("no", { status: 400 });
    },
    websocket: {
      message(ws) {
        ws.send(name);
      },
    },
  });
  cleanup.push(() => server.stop(true));
  return Object.assign(server, counter);
}

function start(
  engine: Engine,
  backends: { id: string; url: string; maxWebSockets?: number; maxConn?: number }[],
  pool = {},
) {
  const t = startInProcess(
    onEngine(
      {
        listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
        pools: { app: { backends, ...pool } },
        admin: { address: "127.0.0.1:0", token: TOKEN },
      } as ConfigInput,
      engine,
    ),
  );
  cleanup.push(() => t.stop());
  return t;
}

const urlOf = (s: Server<undefined>) => `http://127.0.0.1:${s.port}`;

function open(t: Running): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(t.url().replace("http:", "ws:"));
    ws.onopen = () => resolve(ws);
    ws.onerror = () => reject(new Error("websocket failed to open"));
    cleanup.push(() => ws.close());
  });
}

const ask = (ws: WebSocket) =>
  new Promise<string>((resolve) => {
    ws.addEventListener("message", (ev) => resolve(String(ev.data)), { once: true });
    ws.send("who");
  });

async function backends(
  t: Running,
): Promise<Record<string, { inflight: number; websockets: number; health: string }>> {
  const res = await fetch(`http://127.0.0.1:${t.tether.admin?.port}/api/backends`, {
    headers: { authorization: `Bearer ${TOKEN}` },
  });
  const body = (await res.json()) as {
    backends: { id: string; inflight: number; websockets: number; health: string }[];
  };
  return Object.fromEntries(body.backends.map((b) => [b.id, b]));
}

const upgradeHeaders = {
  upgrade: "websocket",
  connection: "Upgrade",
  "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
  "sec-websocket-version": "13",
};

for (const engine of ENGINES)
  describe(`a backend that refuses the upgrade${engineLabel(engine)}`, () => {
    test("has its status, headers and body relayed to the client, and no other backend is tried", async () => {
      const refusing = wsBackend(
        "r1",
        () =>
          new Response("sign in first", {
            status: 401,
            headers: { "www-authenticate": 'Bearer realm="app"', "x-from": "r1" },
          }),
      );
      const t = start(engine, [{ id: "r1", url: urlOf(refusing) }]);
      const res = await fetch(`${t.url()}/socket`, { headers: upgradeHeaders });
      expect(res.status).toBe(401);
      expect(res.headers.get("www-authenticate")).toBe('Bearer realm="app"');
      expect(res.headers.get("x-from")).toBe("r1");
      expect(await res.text()).toBe("sign in first");
      expect((await backends(t)).r1?.websockets).toBe(0);
    });

    test("with 403 and 404 as well, even when another backend would accept", async () => {
      for (const status of [403, 404]) {
        const refusing = wsBackend("r", () => new Response(`status ${status}`, { status }));
        const accepting = wsBackend("a");
        // Only the refusing backend takes new sessions; the accepting one is there to be (not) tried.
        const t = start(engine, [
          { id: "r", url: urlOf(refusing) },
          { id: "a", url: urlOf(accepting) },
        ]);
        await fetch(`http://127.0.0.1:${t.tether.admin?.port}/api/backends/app/a`, {
          method: "PUT",
          headers: { authorization: `Bearer ${TOKEN}` },
          body: JSON.stringify({ state: "drain" }),
        });
        const res = await fetch(`${t.url()}/`, { headers: upgradeHeaders });
        expect(res.status).toBe(status);
        expect(await res.text()).toBe(`status ${status}`);
        expect(accepting.upgrades).toBe(0);
      }
    });

    test("answering 500 counts for passive health like any response", async () => {
      const failing = wsBackend("f", () => new Response("broken", { status: 500 }));
      const t = start(engine, [{ id: "f", url: urlOf(failing) }], {
        failOn5xx: true,
        maxFails: 2,
        failTimeoutMs: 60_000,
      });
      expect((await fetch(`${t.url()}/`, { headers: upgradeHeaders })).status).toBe(500);
      expect((await backends(t)).f?.health).toBe("up");
      expect((await fetch(`${t.url()}/`, { headers: upgradeHeaders })).status).toBe(500);
      expect((await backends(t)).f?.health).toBe("down");
    });
  });

for (const engine of ENGINES)
  describe(`an open WebSocket${engineLabel(engine)}`, () => {
    test("counts on its backend until it closes, and holds no request slot", async () => {
      const b1 = wsBackend("b1");
      const t = start(engine, [{ id: "b1", url: urlOf(b1), maxConn: 1 }]);
      const sockets = [await open(t), await open(t), await open(t)];
      for (const ws of sockets) expect(await ask(ws)).toBe("b1");
      expect((await backends(t)).b1).toMatchObject({ websockets: 3, inflight: 0 });
      // maxConn 1 still lets a plain request through while three sockets are open.
      const plain = await fetch(`${t.url()}/`, { signal: AbortSignal.timeout(3_000) });
      expect(plain.status).toBe(400); // the backend's answer to a non-upgrade request
      sockets[0]?.close();
      sockets[1]?.close();
      for (let i = 0; i < 100 && (await backends(t)).b1?.websockets !== 1; i++) await Bun.sleep(10);
      expect((await backends(t)).b1?.websockets).toBe(1);
    });

    test("beyond maxWebSockets an upgrade goes to another backend, and with none left gets 503", async () => {
      const b1 = wsBackend("b1");
      const b2 = wsBackend("b2");
      const t = start(engine, [
        { id: "b1", url: urlOf(b1), maxWebSockets: 1 },
        { id: "b2", url: urlOf(b2), maxWebSockets: 1 },
      ]);
      const first = await open(t);
      const second = await open(t);
      expect(new Set([await ask(first), await ask(second)])).toEqual(new Set(["b1", "b2"]));
      const counts = await backends(t);
      expect([counts.b1?.websockets, counts.b2?.websockets]).toEqual([1, 1]);
      const third = await fetch(`${t.url()}/`, { headers: upgradeHeaders });
      expect(third.status).toBe(503);
    });

    test("is in the Prometheus gauge", async () => {
      const b1 = wsBackend("b1");
      const t = start(engine, [{ id: "b1", url: urlOf(b1) }]);
      const ws = await open(t);
      await ask(ws);
      const metrics = await fetch(`http://127.0.0.1:${t.tether.admin?.port}/metrics`, {
        headers: { authorization: `Bearer ${TOKEN}` },
      });
      expect(await metrics.text()).toContain('tether_backend_websockets{pool="app",backend="b1"} 1');
    });
  });
