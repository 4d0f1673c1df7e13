/**
 * HTTP forwarding through a running tether (RFC 9110 / 9112 behaviour).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { connect } from "node:net";
import { gzipSync } from "node:zlib";
import { backend, closedPort, rawBackend, rawRequest, type TestBackend } from "../support/backends.ts";
import {
  ENGINES,
  engineLabel,
  onEngine,
  type Running,
  simpleConfig,
  startInProcess,
} from "../support/tether.ts";

for (const engine of ENGINES)
  describe(`forwarding${engineLabel(engine)}`, () => {
    let app: TestBackend;
    let proxy: Running;
    const seen: Request[] = [];
    const gz = gzipSync(Buffer.from("hello compressed world ".repeat(100)));

    beforeAll(() => {
      app = backend("app", async (req) => {
        seen.push(req);
        const url = new URL(req.url);
        if (url.pathname.startsWith("/query")) return new Response(req.url.slice(req.url.indexOf("/query")));
        switch (url.pathname) {
          case "/gzip":
            return new Response(gz, {
              headers: { "content-encoding": "gzip", "content-type": "text/plain" },
            });
          case "/redirect":
            return new Response(null, { status: 302, headers: { location: "/elsewhere" } });
          case "/no-content":
            return new Response(null, { status: 204 });
          case "/not-modified":
            return new Response(null, { status: 304, headers: { etag: '"v1"' } });
          case "/echo":
            return new Response(await req.arrayBuffer(), { headers: { "x-method": req.method } });
          case "/chunked":
            return new Response(
              new ReadableStream({
                async start(c) {
                  for (let i = 0; i < 5; i++) {
                    c.enqueue(new TextEncoder().encode(`part${i};`));
                    await Bun.sleep(5);
                  }
                  c.close();
                },
              }),
            );
          case "/big-header":
            return new Response("ok", { headers: { "x-big": "v".repeat(12_000) } });
          case "/headers":
            return Response.json(Object.fromEntries(req.headers));
          default:
            return new Response("app", { headers: { "content-length": "3" } });
        }
      });
      proxy = startInProcess(onEngine(simpleConfig([app.url]), engine));
    });
    afterAll(async () => {
      await proxy.stop();
      app.stop();
    });

    test("a gzip response reaches the client byte-identical with its Content-Encoding", async () => {
      const res = await fetch(`${proxy.url()}/gzip`, {
        decompress: false,
        headers: { "accept-encoding": "gzip" },
      });
      expect(res.headers.get("content-encoding")).toBe("gzip");
      expect(Buffer.from(await res.arrayBuffer()).equals(gz)).toBe(true);
    });

    test("the client's Accept-Encoding reaches the backend as sent", async () => {
      const res = await fetch(`${proxy.url()}/headers`, {
        headers: { "accept-encoding": "br;q=1, zstd" },
        decompress: false,
      });
      const got = (await res.json()) as Record<string, string>;
      expect(got["accept-encoding"]).toBe("br;q=1, zstd");
    });

    test("redirects pass through and are never followed", async () => {
      const res = await fetch(`${proxy.url()}/redirect`, { redirect: "manual" });
      expect(res.status).toBe(302);
      expect(res.headers.get("location")).toBe("/elsewhere");
    });

    test("HEAD keeps the backend's Content-Length and has no body", async () => {
      const out = await rawRequest(proxy.port(), "HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
      expect(out).toMatch(/^HTTP\/1\.1 200/);
      expect(out.toLowerCase()).toContain("content-length: 3");
      expect(out.endsWith("\r\n\r\n")).toBe(true);
    });

    test("a Connection: close request gets Connection: close on its response (RFC 9112 §9.6)", async () => {
      const out = await rawRequest(proxy.port(), "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
      expect(out).toMatch(/^HTTP\/1\.1 200/);
      expect(out.toLowerCase()).toContain("\r\nconnection: close\r\n");
      const kept = await fetch(`${proxy.url()}/`);
      expect(kept.headers.get("connection")).not.toBe("close");
      await kept.text();
    });

    test("204 and 304 come through without a body", async () => {
      const a = await fetch(`${proxy.url()}/no-content`);
      expect(a.status).toBe(204);
      expect(await a.text()).toBe("");
      const b = await fetch(`${proxy.url()}/not-modified`);
      expect(b.status).toBe(304);
      expect(b.headers.get("etag")).toBe('"v1"');
    });

    test("a chunked (streamed) response arrives whole", async () => {
      expect(await (await fetch(`${proxy.url()}/chunked`)).text()).toBe("part0;part1;part2;part3;part4;");
    });

    test("request bodies are forwarded, with Content-Length and chunked", async () => {
      const body = "x".repeat(100_000);
      const a = await fetch(`${proxy.url()}/echo`, { method: "POST", body });
      expect(await a.text()).toBe(body);
      const stream = new ReadableStream({
        start(c) {
          c.enqueue(new TextEncoder().encode("abc"));
          c.enqueue(new TextEncoder().encode("def"));
          c.close();
        },
      });
      const b = await fetch(`${proxy.url()}/echo`, {
        method: "PUT",
        body: stream,
        duplex: "half",
      } as RequestInit);
      expect(await b.text()).toBe("abcdef");
      expect(b.headers.get("x-method")).toBe("PUT");
    });

    test("query strings and path parameters reach the backend unchanged", async () => {
      const target = "/query;jsessionid=ABC?x=1&y=%20z&sid=q";
      expect(await (await fetch(`${proxy.url()}${target}`)).text()).toBe(target);
    });

    test("large response headers pass through", async () => {
      const res = await fetch(`${proxy.url()}/big-header`);
      expect(res.headers.get("x-big")?.length).toBe(12_000);
    });

    test("request headers over the limit get 431", async () => {
      const res = await fetch(`${proxy.url()}/`, { headers: { "x-huge": "h".repeat(20_000) } });
      expect(res.status).toBe(431);
    });

    test("X-Forwarded-* and Forwarded are set, and a client's spoofed values replaced", async () => {
      const res = await fetch(`${proxy.url()}/headers`, {
        headers: { "x-forwarded-for": "6.6.6.6", forwarded: "for=6.6.6.6", host: "shop.example" },
      });
      const got = (await res.json()) as Record<string, string>;
      expect(got["x-forwarded-for"]).toBe("127.0.0.1");
      expect(got["x-forwarded-proto"]).toBe("http");
      expect(got["x-forwarded-host"]).toBe("shop.example");
      expect(got.forwarded).toBe("for=127.0.0.1;proto=http;host=shop.example");
      expect(got.host).toBe("shop.example");
    });

    test("Connection tokens naming Host or a forwarding header remove neither from the backend request", async () => {
      // Raw bytes: fetch does not let a client set Connection.
      const out = await rawRequest(
        proxy.port(),
        "GET /headers HTTP/1.1\r\nHost: shop.example\r\nConnection: host, x-forwarded-for, close\r\n" +
          "X-Forwarded-For: 6.6.6.6\r\n\r\n",
      );
      expect(out).toMatch(/^HTTP\/1\.1 200/);
      const got = JSON.parse(out.slice(out.indexOf("\r\n\r\n") + 4)) as Record<string, string>;
      expect(got.host).toBe("shop.example");
      expect(got["x-forwarded-for"]).toBe("127.0.0.1");
      expect(got["x-forwarded-host"]).toBe("shop.example");
      expect(got.forwarded).toBe("for=127.0.0.1;proto=http;host=shop.example");
    });

    test("a garbage request line gets a 4xx, and the proxy keeps serving", async () => {
      const out = await rawRequest(proxy.port(), "GARBAGE\r\n\r\n");
      expect(out).toMatch(/^HTTP\/1\.1 4\d\d/);
      expect((await fetch(`${proxy.url()}/`)).status).toBe(200);
    });
  });

for (const engine of ENGINES)
  describe(`hop-by-hop headers on the wire${engineLabel(engine)}`, () => {
    test("are removed in both directions", async () => {
      const raw = rawBackend((s) => {
        s.write(
          "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=9\r\nProxy-Authenticate: Basic\r\nX-Kept: yes\r\n\r\nok",
        );
      });
      const proxy = startInProcess(onEngine(simpleConfig([raw.url]), engine));
      try {
        const res = await fetch(`${proxy.url()}/`, {
          headers: {
            connection: "keep-alive, X-Client-Hop",
            "x-client-hop": "1",
            te: "trailers",
            "proxy-authorization": "Basic eDp5",
            "x-client-kept": "yes",
          },
        });
        expect(await res.text()).toBe("ok");
        expect(res.headers.get("x-hop")).toBeNull();
        expect(res.headers.get("keep-alive")).toBeNull();
        expect(res.headers.get("proxy-authenticate")).toBeNull();
        expect(res.headers.get("x-kept")).toBe("yes");
        const sent = (raw.received[0] ?? "").toLowerCase();
        expect(sent).toContain("x-client-kept: yes");
        expect(sent).not.toContain("x-client-hop");
        expect(sent).not.toContain("proxy-authorization");
        expect(sent).not.toMatch(/\r\nte:/);
      } finally {
        await proxy.stop();
        raw.stop();
      }
    });
  });

for (const engine of ENGINES)
  describe(`failures${engineLabel(engine)}`, () => {
    test("an unreachable backend gives 502 without revealing its address", async () => {
      const port = closedPort();
      const proxy = startInProcess(
        onEngine(simpleConfig([`http://127.0.0.1:${port}`], {}, { retries: 0 }), engine),
      );
      try {
        const res = await fetch(`${proxy.url()}/`);
        expect(res.status).toBe(502);
        const body = await res.text();
        expect(body).not.toContain("127.0.0.1");
        expect(body).not.toContain(String(port));
      } finally {
        await proxy.stop();
      }
    });

    test("a failed connect is retried on the next backend", async () => {
      const good = backend("good");
      const proxy = startInProcess(
        onEngine(simpleConfig([`http://127.0.0.1:${closedPort()}`, good.url]), engine),
      );
      try {
        for (let i = 0; i < 4; i++) expect(await (await fetch(`${proxy.url()}/`)).text()).toBe("good");
      } finally {
        await proxy.stop();
        good.stop();
      }
    });

    test("no eligible backend gives 503", async () => {
      const b = backend("b");
      const proxy = startInProcess(
        onEngine(
          {
            listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
            pools: { app: { backends: [{ id: "m", url: b.url, state: "maint" }] } },
          },
          engine,
        ),
      );
      try {
        expect((await fetch(`${proxy.url()}/`)).status).toBe(503);
        expect(b.hits).toBe(0);
      } finally {
        await proxy.stop();
        b.stop();
      }
    });

    test("a backend slower than responseTimeoutMs gives 504", async () => {
      const slow = backend("slow", async () => {
        await Bun.sleep(1500);
        return new Response("late");
      });
      const proxy = startInProcess(
        onEngine(simpleConfig([slow.url], {}, { responseTimeoutMs: 300 }), engine),
      );
      try {
        const t0 = performance.now();
        const res = await fetch(`${proxy.url()}/`);
        expect(res.status).toBe(504);
        expect(performance.now() - t0).toBeLessThan(1400);
      } finally {
        await proxy.stop();
        slow.stop();
      }
    });

    test("a backend that resets mid-response gives the client a broken response, not a hang", async () => {
      const raw = rawBackend((s) => {
        s.write("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial");
        setTimeout(() => s.terminate(), 50);
      });
      const proxy = startInProcess(onEngine(simpleConfig([raw.url]), engine));
      try {
        const res = await fetch(`${proxy.url()}/`);
        expect(res.status).toBe(200);
        const outcome = await Promise.race([
          res.text().then(
            (t) => `complete:${t.length}`,
            () => "error",
          ),
          Bun.sleep(5000).then(() => "hang"),
        ]);
        expect(outcome).not.toBe("hang");
        expect(outcome).not.toBe("complete:100000");
      } finally {
        await proxy.stop();
        raw.stop();
      }
    });

    test("a body over maxBodyBytes gets 413 and never reaches the backend", async () => {
      const b = backend("b");
      const proxy = startInProcess(
        onEngine(
          {
            listeners: [
              { name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app", maxBodyBytes: 1000 },
            ],
            pools: { app: { backends: [{ id: "b", url: b.url }] } },
          },
          engine,
        ),
      );
      try {
        const res = await fetch(`${proxy.url()}/`, { method: "POST", body: "x".repeat(5000) });
        expect(res.status).toBe(413);
        expect(b.hits).toBe(0);
      } finally {
        await proxy.stop();
        b.stop();
      }
    });
  });

for (const engine of ENGINES)
  describe(`long responses${engineLabel(engine)}`, () => {
    test("a client that hangs up on a slow backend cancels the backend request", async () => {
      const seen = Promise.withResolvers<void>();
      const closed = Promise.withResolvers<void>();
      // Never answers: only the client leaving can end the exchange.
      const silent = Bun.listen({
        hostname: "127.0.0.1",
        port: 0,
        socket: { data: () => seen.resolve(), close: () => closed.resolve() },
      });
      const proxy = startInProcess(
        onEngine(
          {
            listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
            pools: { app: { backends: [{ id: "s", url: `http://127.0.0.1:${silent.port}` }] } },
          },
          engine,
        ),
      );
      try {
        const client = connect(proxy.port(), "127.0.0.1");
        client.write("GET /wait HTTP/1.1\r\nHost: shop.example\r\n\r\n");
        await seen.promise;
        client.destroy();
        const outcome = await Promise.race([
          closed.promise.then(() => "backend connection closed"),
          Bun.sleep(5000).then(() => "still open after 5 s"),
        ]);
        expect(outcome).toBe("backend connection closed");
      } finally {
        await proxy.stop();
        silent.stop(true);
      }
    });

    test("a server-sent event stream quieter than clientIdleMs is not cut", async () => {
      const sse = backend("sse", () => {
        return new Response(
          new ReadableStream({
            async start(c) {
              c.enqueue(new TextEncoder().encode("data: one\n\n"));
              await Bun.sleep(2200);
              c.enqueue(new TextEncoder().encode("data: two\n\n"));
              c.close();
            },
          }),
          { headers: { "content-type": "text/event-stream" } },
        );
      });
      const proxy = startInProcess(
        onEngine(
          {
            listeners: [
              { name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app", clientIdleMs: 1000 },
            ],
            pools: { app: { backends: [{ id: "s", url: sse.url }] } },
          },
          engine,
        ),
      );
      try {
        const text = await (await fetch(`${proxy.url()}/`)).text();
        expect(text).toBe("data: one\n\ndata: two\n\n");
      } finally {
        await proxy.stop();
        sse.stop();
      }
    });

    // Up to 4 s the idle timer is suspended at once; over 4 s, by the request clock's sweep a quarter
    // second or more into the request (src/server/request-clock.ts). Bun's idle timers tick every
    // 4 s, so 1 s can fire at any moment and 5 s between 4 and 8 s: each wait outlasts that.
    for (const { idleMs, waitMs } of [
      { idleMs: 1000, waitMs: 2200 },
      { idleMs: 5000, waitMs: 9500 },
    ]) {
      test(`a long poll that answers after clientIdleMs (${idleMs} ms) still arrives`, async () => {
        const poll = backend("poll", async () => {
          await Bun.sleep(waitMs);
          return new Response("event");
        });
        const proxy = startInProcess(
          onEngine(
            {
              listeners: [
                { name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app", clientIdleMs: idleMs },
              ],
              pools: { app: { backends: [{ id: "p", url: poll.url }] } },
            },
            engine,
          ),
        );
        try {
          expect(await (await fetch(`${proxy.url()}/`)).text()).toBe("event");
        } finally {
          await proxy.stop();
          poll.stop();
        }
      }, 20_000);
    }
  });
