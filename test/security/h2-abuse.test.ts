/**
 * HTTP/2 abuse against a running tether: a rapid-reset storm (CVE-2023-44487),
 * SETTINGS and PING floods, an oversize header block, many idle connections.
 * Each checks behaviour (normal clients served, backend work bounded); the
 * rates a normal client keeps under each are measured by bench/h2-abuse.ts,
 * not asserted here.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { backend, type TestBackend } from "../support/backends.ts";
import { h2Request } from "../support/h2.ts";
import { FLAG, FRAME, frame, h2Connect, headerBlock, headersFrame, rstStream } from "../support/h2-frames.ts";
import { REPO, type Running, startInProcess } from "../support/tether.ts";

/** Polls until `done()` holds; the deadline only bounds a failure, it measures nothing. */
async function eventually(done: () => boolean, what: () => string, timeoutMs = 5_000) {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`not reached: ${what()}`);
    await Bun.sleep(25);
  }
}

describe("HTTP/2 abuse", () => {
  let slow: TestBackend;
  let started = 0;
  let cancelled = 0;
  let proxy: Running;
  let origin: string;

  beforeAll(() => {
    // /slow answers after 30 s unless its request is cancelled first; anything else at once.
    slow = backend("slow", async (req) => {
      if (new URL(req.url).pathname !== "/slow") return new Response("ok");
      started++;
      req.signal.addEventListener("abort", () => cancelled++, { once: true });
      await Bun.sleep(30_000);
      return new Response("late");
    });
    proxy = startInProcess({
      listeners: [
        {
          name: "secure",
          protocol: "https",
          address: "127.0.0.1:0",
          pool: "app",
          tls: {
            certificates: [{ cert: join(REPO, "certs/dev.pem"), key: join(REPO, "certs/dev-key.pem") }],
          },
          protocols: ["http/1.1", "h2"],
        },
      ],
      pools: { app: { backends: [{ id: "slow", url: slow.url }] } },
    });
    origin = proxy.url();
  });
  afterAll(async () => {
    await proxy.stop();
    slow.stop();
  });

  test("rapid reset: every backend request whose client stream was cancelled is cancelled, and others are served", async () => {
    const conn = await h2Connect(proxy.port());
    const authority = `127.0.0.1:${proxy.port()}`;
    const storm: Buffer[] = [];
    for (let i = 0; i < 2000; i++) {
      const stream = 1 + 2 * i;
      storm.push(
        headersFrame(stream, [
          [":method", "GET"],
          [":scheme", "https"],
          [":authority", authority],
          [":path", "/slow"],
        ]),
        rstStream(stream),
      );
    }
    conn.send(...storm);
    // Bun ends the connection (GOAWAY) after about a thousand resets; tether has seen some of the streams.
    const goaway = await conn.waitFor((f) => f.type === FRAME.GOAWAY, 5_000);
    expect(goaway === null ? "no GOAWAY" : "GOAWAY").toBe("GOAWAY");
    expect(await h2Request(origin, { ":path": "/" })).toMatchObject({ status: 200, body: "ok" });
    await eventually(
      () => started > 0 && cancelled === started,
      () => `${started} backend requests started, ${cancelled} cancelled`,
    );
    expect(started).toBeLessThanOrEqual(2000);
    expect(proxy.tether.listeners.get("secure")?.inflight()).toBe(0);
    conn.close();
  });

  test("a SETTINGS flood and a PING flood: the connection is answered or closed, other clients are served", async () => {
    for (const flood of [frame(FRAME.SETTINGS, 0, 0), frame(FRAME.PING, 0, 0, Buffer.alloc(8))]) {
      const conn = await h2Connect(proxy.port());
      conn.send(...Array.from({ length: 20_000 }, () => flood));
      // Served meanwhile, on its own connection.
      expect(await h2Request(origin, { ":path": "/" })).toMatchObject({ status: 200, body: "ok" });
      await conn.waitFor((f) => f.type === FRAME.GOAWAY, 1_000);
      conn.close();
    }
  });

  test("a header block over the request-head limit is refused and reaches no backend", async () => {
    const before = slow.hits;
    const conn = await h2Connect(proxy.port());
    const authority = `127.0.0.1:${proxy.port()}`;
    // 30 KB of fields in one HEADERS and a CONTINUATION, each under the 16 KiB frame size.
    const block = headerBlock([
      [":method", "GET"],
      [":scheme", "https"],
      [":authority", authority],
      [":path", "/big"],
      ["x-big", "a".repeat(15_000)],
      ["x-big2", "a".repeat(15_000)],
    ]);
    conn.send(
      frame(FRAME.HEADERS, FLAG.END_STREAM, 1, block.subarray(0, 16_000)),
      frame(FRAME.CONTINUATION, FLAG.END_HEADERS, 1, block.subarray(16_000)),
    );
    const outcome = await conn.outcome(1);
    conn.close();
    // Bun's limit, the process's maxHeaderBytes (16 KiB here), applies to an HTTP/2 header block too.
    expect(outcome).toBe("status 431");
    expect(slow.hits).toBe(before);
    expect(await h2Request(origin, { ":path": "/" })).toMatchObject({ status: 200 });
  });

  test("1,000 idle h2 connections: a normal client is still served", async () => {
    const idle = [];
    for (let i = 0; i < 1000; i++) idle.push(h2Connect(proxy.port()));
    const conns = await Promise.all(idle);
    try {
      expect(await h2Request(origin, { ":path": "/" })).toMatchObject({ status: 200, body: "ok" });
      expect(conns.filter((c) => c.closed)).toHaveLength(0);
    } finally {
      for (const c of conns) c.close();
    }
  }, 30_000);
});
