/**
 * Abortive closes through a tls-passthrough listener, with real sockets: a
 * peer's RST reaches the other peer as a RST (ECONNRESET), and a FIN as a
 * FIN. Bun reports a reset to the close handler as an ECONNRESET error and
 * terminate() sends one (SO_LINGER 0); the first test pins that down.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { Tether } from "../../src/server/app.ts";
import { startTether } from "../../src/server/app.ts";
import { config, memoryLogger } from "../support/tether.ts";
import { concat, type RawConn, rawClient, rawServer, readHexFixture } from "./support.ts";

const HELLO = readHexFixture("client-openssl-tls12-new.hex");
const text = (s: string) => new TextEncoder().encode(s);

/** Waits (at most 5 s) for the connection to close. */
async function closed(c: RawConn): Promise<void> {
  await Promise.race([c.whenClosed, Bun.sleep(5000)]);
  expect(c.closed).toBe(true);
}

let backend: ReturnType<typeof rawServer>;
let tether: Tether;
let port = 0;

beforeAll(() => {
  backend = rawServer();
  tether = startTether(
    config({
      listeners: [{ name: "tls", protocol: "tls-passthrough", address: "127.0.0.1:0", pool: "raw" }],
      pools: { raw: { backends: [{ id: "raw", url: `tcp://127.0.0.1:${backend.port}` }] } },
    }),
    memoryLogger(),
  );
  port = tether.listeners.get("tls")?.server.port ?? 0;
});
afterAll(async () => {
  await tether.stop(200);
  backend.stop();
});

/** A client through tether, and the backend connection it got, once the backend has the hello and "ping". */
async function connected(): Promise<{ client: RawConn; server: RawConn }> {
  const before = backend.conns.length;
  const client = await rawClient(port, concat(HELLO, text("ping")));
  for (let i = 0; i < 500 && backend.conns.length === before; i++) await Bun.sleep(10);
  const server = backend.conns[before] as RawConn;
  await server.waitFor(HELLO.length + 4);
  return { client, server };
}

test("Bun itself: terminate() reaches the peer as ECONNRESET, end() as a FIN", async () => {
  const direct = rawServer();
  try {
    const a = await rawClient(direct.port, text("x"));
    for (let i = 0; i < 500 && direct.conns.length === 0; i++) await Bun.sleep(10);
    a.socket.terminate();
    await closed(direct.conns[0] as RawConn);
    expect(direct.conns[0]?.closeError).toBe("ECONNRESET");

    const b = await rawClient(direct.port, text("x"));
    for (let i = 0; i < 500 && direct.conns.length === 1; i++) await Bun.sleep(10);
    const peer = direct.conns[1] as RawConn;
    b.socket.end();
    for (let i = 0; i < 500 && !peer.gotFin; i++) await Bun.sleep(10);
    expect(peer.gotFin).toBe(true);
    expect(peer.closeError).toBeNull();
  } finally {
    direct.stop();
  }
});

test("a client's RST reaches the backend as a RST", async () => {
  const { client, server } = await connected();
  client.socket.terminate();
  await closed(server);
  expect(server.closeError).toBe("ECONNRESET");
  expect(server.gotFin).toBe(false);
});

test("a backend's RST reaches the client as a RST", async () => {
  const { client, server } = await connected();
  server.socket.terminate();
  await closed(client);
  expect(client.closeError).toBe("ECONNRESET");
  expect(client.gotFin).toBe(false);
});

test("a RST after a half-close still arrives as a RST", async () => {
  const { client, server } = await connected();
  client.socket.shutdown();
  for (let i = 0; i < 500 && !server.gotFin; i++) await Bun.sleep(10);
  expect(server.gotFin).toBe(true);
  // The backend keeps talking, then aborts: the client, still reading, must see the abort.
  server.socket.write("partial");
  await client.waitFor(7);
  server.socket.terminate();
  await closed(client);
  expect(client.closeError).toBe("ECONNRESET");
});

test("a FIN still reaches the other side as a FIN, both ways", async () => {
  const { client, server } = await connected();
  client.socket.shutdown();
  for (let i = 0; i < 500 && !server.gotFin; i++) await Bun.sleep(10);
  expect(server.gotFin).toBe(true);
  server.socket.end();
  // A socket that already sent its FIN gets a close without an end event (Bun): no error is the FIN.
  await closed(client);
  expect(client.closeError).toBeNull();
  await closed(server);
  expect(server.closeError).toBeNull();
});
