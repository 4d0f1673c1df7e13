/**
 * With worker threads, the primary's admin API shows the load the workers
 * carry: requests in flight and open WebSockets, summed over the workers.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Server } from "bun";
import { tempDir, writeConfig } from "../support/files.ts";
import { type Child, spawnCli, workersListening } from "../support/tether.ts";

const TOKEN = "workers-load-token";

describe("workers: 2, the load in the primary's view", () => {
  let upstream: Server<undefined>;
  let child: Child;
  let port = 0;
  let adminPort = 0;
  const held: (() => void)[] = [];

  beforeAll(async () => {
    upstream = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch(req, srv) {
        if (new URL(req.url).pathname === "/slow")
          return new Promise<Response>((resolve) => held.push(() => resolve(new Response("done"))));
        return srv.upgrade(req) ? undefined : new Response("not a websocket", { status: 400 });
      },
      websocket: {
        message(ws, m) {
          ws.send(m);
        },
      },
    });
    const file = writeConfig(tempDir(), {
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: { app: { backends: [{ id: "b1", url: `http://127.0.0.1:${upstream.port}` }] } },
      workers: 2,
      admin: { address: "127.0.0.1:0", token: TOKEN },
      snapshot: false,
    });
    child = spawnCli(["--config", file]);
    adminPort = await child.listening("admin");
    await child.waitFor((l) => l.msg === "worker ready" && l.worker === 1, 15_000);
    port = await workersListening(child);
  });
  afterAll(async () => {
    for (const release of held) release();
    await child?.stop();
    upstream?.stop(true);
  });

  const load = async () => {
    const res = await fetch(`http://127.0.0.1:${adminPort}/api/backends`, {
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    const body = (await res.json()) as { backends: { inflight: number; websockets: number }[] };
    return body.backends[0] as { inflight: number; websockets: number };
  };
  /** Workers report once a second: wait up to 5 s for the view to match. */
  const until = async (want: { inflight: number; websockets: number }) => {
    const deadline = Date.now() + 5_000;
    let seen = await load();
    while (
      Date.now() < deadline &&
      (seen.inflight !== want.inflight || seen.websockets !== want.websockets)
    ) {
      await Bun.sleep(100);
      seen = await load();
    }
    return seen;
  };

  test("open WebSockets and requests in flight are counted, and uncounted when they end", async () => {
    const sockets = await Promise.all(
      Array.from(
        { length: 6 },
        () =>
          new Promise<WebSocket>((resolve, reject) => {
            const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
            ws.onopen = () => resolve(ws);
            ws.onerror = () => reject(new Error("websocket failed to open"));
          }),
      ),
    );
    const slow = [fetch(`http://127.0.0.1:${port}/slow`), fetch(`http://127.0.0.1:${port}/slow`)];
    expect(await until({ inflight: 2, websockets: 6 })).toMatchObject({ inflight: 2, websockets: 6 });
    for (const ws of sockets) ws.close();
    for (const release of held.splice(0)) release();
    await Promise.all(slow);
    expect(await until({ inflight: 0, websockets: 0 })).toMatchObject({ inflight: 0, websockets: 0 });
  });
});
