/**
 * The tcp:// health probe on real sockets: connect, TLS handshake, and the
 * PROXY LOCAL header it sends first when the pool speaks PROXY.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { probeTcp } from "../../src/passthrough/probe.ts";
import { closedPort } from "../support/backends.ts";
import { tempDir } from "../support/files.ts";
import { makeCert, type RawConn, rawServer, type SServer, sServer } from "./support.ts";

describe("probeTcp", () => {
  let tls: SServer;
  const raw = rawServer();

  beforeAll(async () => {
    tls = await sServer(await makeCert(tempDir(), "probe.test"));
  });
  afterAll(async () => {
    await tls.stop();
    raw.stop();
  });

  test("a listening port passes a connect check", async () => {
    expect(await probeTcp("127.0.0.1", raw.port, { timeoutMs: 500 })).toEqual({
      ok: true,
      reason: "connected",
    });
  });

  test("a closed port fails as refused", async () => {
    expect(await probeTcp("127.0.0.1", closedPort(), { timeoutMs: 500 })).toEqual({
      ok: false,
      reason: "refused",
    });
  });

  test("a TLS server passes a handshake check (its self-signed certificate is not the question)", async () => {
    const r = await probeTcp("127.0.0.1", tls.port, {
      timeoutMs: 2000,
      tlsHandshake: { serverName: "probe.test" },
    });
    expect(r).toEqual({ ok: true, reason: "handshake" });
  });

  test("a server that does not speak TLS fails a handshake check within the timeout", async () => {
    const t0 = performance.now();
    const r = await probeTcp("127.0.0.1", raw.port, { timeoutMs: 300, tlsHandshake: {} });
    expect(r.ok).toBe(false);
    expect(performance.now() - t0).toBeLessThan(1000);
  });

  test.each([
    ["v1", "PROXY UNKNOWN\r\n"],
    ["v2", "\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00"],
  ] as const)("with PROXY %s it says LOCAL before closing", async (version, want) => {
    const before = raw.conns.length;
    expect((await probeTcp("127.0.0.1", raw.port, { timeoutMs: 500, proxyProtocol: version })).ok).toBe(true);
    const deadline = Date.now() + 1000;
    while (raw.conns.length === before && Date.now() < deadline) await Bun.sleep(5);
    const conn = raw.conns.at(-1) as RawConn;
    await conn.waitFor(want.length);
    expect(conn.text()).toBe(want);
  });
});
