import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { ProxyError } from "../../src/proxy/errors.ts";
import { UpstreamClient } from "../../src/proxy/upstream/client.ts";
import type { UpstreamRequest, UpstreamResponse } from "../../src/proxy/upstream/types.ts";
import {
  blackhole,
  type Cert,
  get,
  OPTS,
  type RawServer,
  rawServer,
  readAll,
  refusedPort,
  selfSignedCert,
  target,
  text,
  until,
} from "./helpers.ts";

const OK = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

async function failure(p: Promise<unknown>): Promise<ProxyError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof ProxyError) return err;
    throw err;
  }
  throw new Error("expected a ProxyError");
}

function streamOf(...chunks: string[]): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(new TextEncoder().encode(chunk));
      controller.close();
    },
  });
}

function post(body: UpstreamRequest["body"], bodyLength: number | null = null): UpstreamRequest {
  return { method: "POST", target: "/up", fields: ["Host", "backend"], body, bodyLength };
}

// Every test gets a fresh client and stops what it started.
let client: UpstreamClient;
const cleanups: (() => void)[] = [];
function track<T extends { stop(): void }>(server: T): T {
  cleanups.push(() => server.stop());
  return server;
}
function raw(onRequest: Parameters<typeof rawServer>[0]): RawServer {
  return track(rawServer(onRequest));
}
function fresh(opts?: ConstructorParameters<typeof UpstreamClient>[0]): UpstreamClient {
  client = new UpstreamClient(opts);
  return client;
}
afterEach(() => {
  client?.close();
  for (const cleanup of cleanups.splice(0)) cleanup();
});

describe("against a Bun.serve backend", () => {
  let backend: ReturnType<typeof Bun.serve>;
  beforeAll(() => {
    backend = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      async fetch(req) {
        const path = new URL(req.url).pathname;
        if (path === "/big") return new Response(new Uint8Array(5_000_000).fill(97));
        if (req.method === "POST") {
          return new Response(await req.arrayBuffer(), {
            headers: {
              "x-te": req.headers.get("transfer-encoding") ?? "",
              "x-cl": req.headers.get("content-length") ?? "",
            },
          });
        }
        return new Response(`hello ${path}`, { headers: { "X-Custom": "Yes" } });
      },
    });
  });
  afterAll(() => backend.stop(true));

  test("small response: status, headers in order, whole body without a stream", async () => {
    const res = await fresh().request(target(backend.port), get("/a"), OPTS);
    expect(res.status).toBe(200);
    expect(res.statusText).toBe("OK");
    expect(res.headers).toContainEqual(["X-Custom", "Yes"]);
    expect(res.body).toBeInstanceOf(Uint8Array);
    expect(await text(res.body)).toBe("hello /a");
    expect(res.contentLength).toBe(8);
  });

  test("large response streams", async () => {
    const res = await fresh().request(target(backend.port), get("/big"), OPTS);
    expect(res.body).toBeInstanceOf(ReadableStream);
    const body = await readAll(res.body);
    expect(body.length).toBe(5_000_000);
    expect(body.every((b) => b === 97)).toBe(true);
    expect(res.contentLength).toBe(5_000_000);
  });

  test("Uint8Array body is sent with Content-Length", async () => {
    const res = await fresh().request(target(backend.port), post(new TextEncoder().encode("payload")), OPTS);
    expect(await text(res.body)).toBe("payload");
    expect(res.headers).toContainEqual(["x-cl", "7"]);
  });

  test("stream body of unknown length is sent chunked", async () => {
    const res = await fresh().request(target(backend.port), post(streamOf("ab", "", "cd", "ef")), OPTS);
    expect(await text(res.body)).toBe("abcdef");
    expect(res.headers).toContainEqual(["x-te", "chunked"]);
  });

  test("stream body of known length is sent with Content-Length", async () => {
    const res = await fresh().request(target(backend.port), post(streamOf("ab", "cd"), 4), OPTS);
    expect(await text(res.body)).toBe("abcd");
    expect(res.headers).toContainEqual(["x-cl", "4"]);
  });

  test("a 50 MB streamed upload arrives whole", async () => {
    const chunk = new Uint8Array(256 * 1024).fill(7);
    let left = 200;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (left-- > 0) controller.enqueue(chunk);
        else controller.close();
      },
    });
    const res = await fresh().request(target(backend.port), post(body, 200 * chunk.length), OPTS);
    expect((await readAll(res.body)).length).toBe(200 * chunk.length);
  });
});

describe("keep-alive pool", () => {
  test("sequential requests share one socket", async () => {
    const server = raw((conn) => conn.write(OK));
    fresh();
    for (let i = 0; i < 5; i++) {
      const res = await client.request(target(server.port), get(), OPTS);
      expect(await text(res.body)).toBe("ok");
    }
    expect(server.connections).toBe(1);
    expect(server.requests.map((r) => r.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(client.idleCount).toBe(1);
  });

  test.each([
    ["Connection: close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"],
    [
      "Connection: keep-alive, Close",
      "HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nok",
    ],
    ["HTTP/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"],
    ["extra bytes after the response", `${OK}HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n`],
  ])("no reuse after %s", async (_name, response) => {
    const server = raw((conn) => conn.write(response));
    fresh();
    for (let i = 0; i < 2; i++) {
      expect(await text((await client.request(target(server.port), get(), OPTS)).body)).toBe("ok");
    }
    expect(server.connections).toBe(2);
  });

  test("no reuse when the request says Connection: close", async () => {
    const server = raw((conn) => conn.write(OK));
    fresh();
    for (let i = 0; i < 2; i++) {
      await client.request(target(server.port), get("/", [["Connection", "close"]]), OPTS);
    }
    expect(server.connections).toBe(2);
  });

  test("unsolicited bytes on an idle socket drop it from the pool", async () => {
    const server = raw((conn) => {
      conn.write(OK);
      setTimeout(() => conn.write("HTTP/1.1 200 OK\r\n"), 10);
    });
    fresh();
    await client.request(target(server.port), get(), OPTS);
    await until(() => server.closed === 1);
    expect(client.idleCount).toBe(0);
    await client.request(target(server.port), get(), OPTS);
    expect(server.connections).toBe(2);
  });

  test("maxIdlePerTarget caps idle sockets", async () => {
    const server = raw((conn) => {
      setTimeout(() => conn.write(OK), 20);
    });
    fresh({ maxIdlePerTarget: 1 });
    await Promise.all([1, 2, 3].map(() => client.request(target(server.port), get(), OPTS)));
    expect(server.connections).toBe(3);
    expect(client.idleCount).toBe(1);
    await until(() => server.closed === 2);
  });

  test("idle sockets close after idleTimeoutMs", async () => {
    const server = raw((conn) => conn.write(OK));
    fresh({ idleTimeoutMs: 40 });
    await client.request(target(server.port), get(), OPTS);
    expect(client.idleCount).toBe(1);
    await until(() => server.closed === 1, 1000);
    expect(client.idleCount).toBe(0);
  });

  test("close() closes idle sockets", async () => {
    const server = raw((conn) => conn.write(OK));
    fresh();
    await client.request(target(server.port), get(), OPTS);
    client.close();
    expect(client.idleCount).toBe(0);
    await until(() => server.closed === 1);
  });

  test("a socket the backend closed while idle is dropped, not used", async () => {
    const server = raw((conn) => {
      conn.write(OK);
      setTimeout(() => conn.socket.end(), 5);
    });
    fresh();
    await client.request(target(server.port), get(), OPTS);
    await until(() => client.idleCount === 0);
    expect(await text((await client.request(target(server.port), get(), OPTS)).body)).toBe("ok");
    expect(server.connections).toBe(2);
  });
});

describe("stale pooled socket", () => {
  /** Answers the first request of each connection, then closes without answering (a backend's idle close racing our request). */
  function staleAfterFirst(close: "end" | "terminate" = "terminate"): RawServer {
    return raw((conn, req) => {
      if (req.seq === 1) conn.write(OK);
      else if (close === "end") conn.socket.end();
      else conn.socket.terminate();
    });
  }

  test.each(["end", "terminate"] as const)(
    "GET is retried once on a fresh socket (close by %s)",
    async (how) => {
      const server = staleAfterFirst(how);
      fresh();
      await client.request(target(server.port), get(), OPTS);
      expect(await text((await client.request(target(server.port), get(), OPTS)).body)).toBe("ok");
      expect(server.connections).toBe(2);
    },
  );

  test("PUT (idempotent) with a Uint8Array body is replayed whole", async () => {
    const server = staleAfterFirst();
    fresh();
    await client.request(target(server.port), get(), OPTS);
    await client.request(
      target(server.port),
      { ...post(new TextEncoder().encode("data")), method: "PUT" },
      OPTS,
    );
    const last = server.requests.at(-1);
    expect(last?.conn).toBe(2);
    expect(new TextDecoder().decode(last?.body)).toBe("data");
  });

  test("POST is never repeated on its own: the backend may have acted on it (RFC 9110 §9.2.2)", async () => {
    const server = staleAfterFirst();
    fresh();
    await client.request(target(server.port), get(), OPTS);
    const err = await failure(
      client.request(target(server.port), post(new TextEncoder().encode("charge=100")), OPTS),
    );
    expect(err.code).toBe("RESET_BEFORE_RESPONSE");
    expect(server.connections).toBe(1);
  });

  test("a small stream body of an idempotent request is replayed from its buffer", async () => {
    const server = staleAfterFirst();
    fresh();
    await client.request(target(server.port), get(), OPTS);
    await client.request(target(server.port), { ...post(streamOf("he", "llo")), method: "PUT" }, OPTS);
    const last = server.requests.at(-1);
    expect(last?.conn).toBe(2);
    expect(new TextDecoder().decode(last?.body)).toBe("2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n");
  });

  test("a stream body larger than the replay buffer is not retried", async () => {
    const server = staleAfterFirst();
    fresh();
    await client.request(target(server.port), get(), OPTS);
    const big = "x".repeat(100 * 1024);
    const err = await failure(client.request(target(server.port), post(streamOf(big), big.length), OPTS));
    expect(err.code).toBe("RESET_BEFORE_RESPONSE");
    expect(server.connections).toBe(1);
  });

  test("the retry happens once", async () => {
    let count = 0;
    const server = raw((conn) => {
      if (++count === 1) conn.write(OK);
      else conn.socket.terminate();
    });
    fresh();
    await client.request(target(server.port), get(), OPTS);
    const err = await failure(client.request(target(server.port), get(), OPTS));
    expect(err.code).toBe("RESET_BEFORE_RESPONSE");
    expect(server.connections).toBe(2);
  });

  test("no retry once a response byte arrived", async () => {
    const server = raw((conn, req) => {
      if (req.seq === 1) conn.write(OK);
      else {
        conn.write("HTTP/1.1 20");
        setTimeout(() => conn.socket.terminate(), 5);
      }
    });
    fresh();
    await client.request(target(server.port), get(), OPTS);
    const err = await failure(client.request(target(server.port), get(), OPTS));
    expect(err.code).toBe("BAD_RESPONSE");
    expect(server.connections).toBe(1);
  });

  test("a fresh socket reset before the response is not retried", async () => {
    const server = raw((conn) => conn.socket.terminate());
    const err = await failure(fresh().request(target(server.port), get(), OPTS));
    expect(err.code).toBe("RESET_BEFORE_RESPONSE");
    expect(err.safeToRetry).toBe(false);
    expect(server.connections).toBe(1);
  });
});

describe("connection failures and timeouts", () => {
  test("refused: CONNECT_FAILED, safe to retry", async () => {
    const err = await failure(fresh().request(target(refusedPort()), get(), OPTS));
    expect(err.code).toBe("CONNECT_FAILED");
    expect(err.safeToRetry).toBe(true);
    expect(err.status).toBe(502);
  });

  test("blackholed port: CONNECT_TIMEOUT, and a late socket is closed", async () => {
    const hole = track(await blackhole());
    const started = performance.now();
    const err = await failure(fresh().request(target(hole.port), get(), { ...OPTS, connectTimeoutMs: 150 }));
    const elapsed = performance.now() - started;
    expect(err.code).toBe("CONNECT_TIMEOUT");
    expect(err.safeToRetry).toBe(true);
    expect(elapsed).toBeGreaterThanOrEqual(140);
    expect(elapsed).toBeLessThan(1000);
    // Free the accept queue: the SYN retransmit gets through, the socket
    // opens after the timeout and must be closed at once.
    expect(await hole.acceptOne()).toBe("closed");
  }, 10_000);

  test("no response head in time: RESPONSE_TIMEOUT and the socket is closed", async () => {
    const server = raw(() => {});
    const started = performance.now();
    const err = await failure(
      fresh().request(target(server.port), get(), { ...OPTS, responseTimeoutMs: 100 }),
    );
    expect(err.code).toBe("RESPONSE_TIMEOUT");
    expect(err.safeToRetry).toBe(false);
    expect(performance.now() - started).toBeGreaterThanOrEqual(95);
    await until(() => server.closed === 1);
  });

  test("the response timeout stops at the head: a slow body is fine", async () => {
    const server = raw((conn) => {
      conn.write("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab");
      setTimeout(() => conn.write("cd"), 150);
    });
    const res = await fresh().request(target(server.port), get(), { ...OPTS, responseTimeoutMs: 100 });
    expect(await text(res.body)).toBe("abcd");
  });

  test("responseTimeoutMs 0 waits as long as it takes", async () => {
    const server = raw((conn) => {
      setTimeout(() => conn.write(OK), 120);
    });
    const res = await fresh().request(target(server.port), get(), { ...OPTS, responseTimeoutMs: 0 });
    expect(await text(res.body)).toBe("ok");
  });

  test.each(["end", "terminate"] as const)(
    "closed (%s) before a response byte: RESET_BEFORE_RESPONSE",
    async (how) => {
      const server = raw((conn) => {
        if (how === "end") conn.socket.end();
        else conn.socket.terminate();
      });
      const err = await failure(fresh().request(target(server.port), get(), OPTS));
      expect(err.code).toBe("RESET_BEFORE_RESPONSE");
    },
  );

  test.each([
    ["reset with Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nabc", "terminate"],
    ["closed with Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nabc", "end"],
    ["closed mid-chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", "end"],
    ["reset when reading until close", "HTTP/1.1 200 OK\r\n\r\nabc", "terminate"],
  ] as const)("%s mid-body: the body stream errors", async (_name, response, how) => {
    const server = raw((conn) => {
      conn.write(response);
      setTimeout(() => (how === "end" ? conn.socket.end() : conn.socket.terminate()), 20);
    });
    const res = await fresh().request(target(server.port), get(), OPTS);
    expect(res.body).toBeInstanceOf(ReadableStream);
    const err = await readAll(res.body).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ProxyError);
    expect((err as ProxyError).code).toBe("BAD_RESPONSE");
  });
});

describe("response framing", () => {
  async function fetchRaw(
    response: string | ((conn: Parameters<Parameters<typeof rawServer>[0]>[0]) => void),
    req = get(),
  ): Promise<{ res: UpstreamResponse; server: RawServer }> {
    const server = raw((conn) => (typeof response === "string" ? conn.write(response) : response(conn)));
    fresh();
    return { res: await client.request(target(server.port), req, OPTS), server };
  }

  test("chunked with extensions and trailers decodes to the payload", async () => {
    const { res } = await fetchRaw(
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
        '5;name=value;quoted="a b"\r\nhello\r\n6 ; x\r\n world\r\n0\r\nX-Trailer: t\r\nY: y\r\n\r\n',
    );
    expect(await text(res.body)).toBe("hello world");
    expect(res.headers.map(([name]) => name)).toEqual(["Transfer-Encoding"]);
    expect(res.contentLength).toBeNull();
  });

  test("a response trickled one byte at a time parses, and the socket is reused", async () => {
    const response = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    const { res, server } = await fetchRaw((conn) => void conn.trickle(response));
    expect(await text(res.body)).toBe("hello");
    await client.request(target(server.port), get(), OPTS).catch(() => {});
    expect(server.connections).toBe(1);
  });

  test("a head trickled one byte at a time, Content-Length body", async () => {
    const { res } = await fetchRaw(
      (conn) => void conn.trickle(`HTTP/1.1 200 OK\r\nX-A: 1\r\n${OK.slice(17)}`),
    );
    expect(res.headers).toEqual([
      ["X-A", "1"],
      ["Content-Length", "2"],
    ]);
    expect(await text(res.body)).toBe("ok");
  });

  test("HEAD: no body, Content-Length reported, socket reused", async () => {
    const { res, server } = await fetchRaw("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", {
      ...get(),
      method: "HEAD",
    });
    expect(res.body).toBeNull();
    expect(res.contentLength).toBe(1234);
    expect(client.idleCount).toBe(1);
    expect(server.connections).toBe(1);
  });

  test.each([
    ["204", "HTTP/1.1 204 No Content\r\n\r\n", null],
    ["304 with Content-Length", "HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n", 50],
    ["Content-Length: 0", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0],
  ])("%s: no body, socket reused", async (_name, response, contentLength) => {
    const { res } = await fetchRaw(response);
    expect(res.body).toBeNull();
    expect(res.contentLength).toBe(contentLength);
    expect(client.idleCount).toBe(1);
  });

  test("100 Continue and 103 Early Hints are skipped", async () => {
    const { res } = await fetchRaw(
      `HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n${OK}`,
    );
    expect(res.status).toBe(200);
    expect(res.headers).toEqual([["Content-Length", "2"]]);
    expect(await text(res.body)).toBe("ok");
  });

  test("interim responses in separate segments", async () => {
    const { res } = await fetchRaw((conn) => {
      conn.write("HTTP/1.1 100 Continue\r\n\r");
      setTimeout(() => conn.write("\nHTTP/1.1 103 Early Hints\r\n\r\n"), 10);
      setTimeout(() => conn.write(OK), 20);
    });
    expect(await text(res.body)).toBe("ok");
  });

  test("no framing: body read until close, socket not reused", async () => {
    const { res, server } = await fetchRaw((conn) => {
      conn.write("HTTP/1.1 200 OK\r\n\r\nabc");
      setTimeout(() => conn.write("def"), 10);
      setTimeout(() => conn.socket.end(), 20);
    });
    expect(await text(res.body)).toBe("abcdef");
    expect(res.contentLength).toBeNull();
    expect(client.idleCount).toBe(0);
    expect(server.connections).toBe(1);
  });

  test("identical duplicate Content-Length values are one value", async () => {
    const { res } = await fetchRaw("HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2, 2\r\n\r\nok");
    expect(res.contentLength).toBe(2);
    expect(await text(res.body)).toBe("ok");
  });

  test("reason phrase may be missing; obs-text survives as Latin-1", async () => {
    const { res } = await fetchRaw((conn) =>
      conn.write(Buffer.from("HTTP/1.1 200\r\nX-Name: caf\xe9\r\nContent-Length: 0\r\n\r\n", "latin1")),
    );
    expect(res.statusText).toBe("");
    expect(res.headers[0]?.[1]).toBe("caf\xe9");
  });

  test("a Content-Length body arriving in pieces streams", async () => {
    const { res } = await fetchRaw((conn) => {
      conn.write("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab");
      setTimeout(() => conn.write("cd"), 10);
      setTimeout(() => conn.write("ef"), 20);
    });
    expect(res.body).toBeInstanceOf(ReadableStream);
    expect(await text(res.body)).toBe("abcdef");
    expect(client.idleCount).toBe(1);
  });
});

describe("malformed responses: BAD_RESPONSE", () => {
  const cases: [string, string][] = [
    ["not HTTP", "garbage\r\n\r\n"],
    ["HTTP/2 status line", "HTTP/2 200 OK\r\n\r\n"],
    ["two-digit status", "HTTP/1.1 20 OK\r\n\r\n"],
    ["obs-fold", "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n"],
    ["bare LF line ends", "HTTP/1.1 200 OK\nContent-Length: 0\n\n"],
    ["bare CR in a value", "HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n"],
    ["NUL in a value", "HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 0\r\n\r\n"],
    ["space before the colon", "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n"],
    ["invalid field name", "HTTP/1.1 200 OK\r\nX(A): 1\r\nContent-Length: 0\r\n\r\n"],
    [
      "Content-Length and Transfer-Encoding",
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
    ["unknown transfer coding", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"],
    ["chunked twice", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"],
    ["non-numeric Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n"],
    ["negative Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"],
    [
      "differing Content-Length values",
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    ],
    ["101 Switching Protocols", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"],
    ["invalid chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
    ["chunk data without CRLF", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n0\r\n\r\n"],
    [
      "chunk size line too long",
      `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;${"e".repeat(5000)}\r\n`,
    ],
    ["head too large", `HTTP/1.1 200 OK\r\nX-Big: ${"b".repeat(2000)}\r\nContent-Length: 0\r\n\r\n`],
  ];

  test.each(cases)("%s", async (_name, response) => {
    const server = raw((conn) => conn.write(response));
    const err = await failure(fresh({ maxHeaderBytes: 1024 }).request(target(server.port), get(), OPTS));
    expect(err.code).toBe("BAD_RESPONSE");
    expect(err.safeToRetry).toBe(false);
    await until(() => server.closed === 1);
  });

  test("head too large, trickled across many segments", async () => {
    const server = raw((conn) => {
      for (let i = 0; i < 40; i++) setTimeout(() => conn.write(`X-${i}: ${"v".repeat(60)}\r\n`), i);
    });
    const err = await failure(fresh({ maxHeaderBytes: 1024 }).request(target(server.port), get(), OPTS));
    expect(err.code).toBe("BAD_RESPONSE");
  });

  test("closed mid-head", async () => {
    const server = raw((conn) => {
      conn.write("HTTP/1.1 200 OK\r\nContent-");
      setTimeout(() => conn.socket.end(), 10);
    });
    const err = await failure(fresh().request(target(server.port), get(), OPTS));
    expect(err.code).toBe("BAD_RESPONSE");
  });

  test("a malformed chunk after the head errors the body stream", async () => {
    const server = raw((conn) => {
      conn.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n");
      setTimeout(() => conn.write("2\r\nokX"), 10);
    });
    const res = await fresh().request(target(server.port), get(), OPTS);
    const err = await readAll(res.body).then(
      () => null,
      (e: unknown) => e,
    );
    expect((err as ProxyError).code).toBe("BAD_RESPONSE");
    await until(() => server.closed === 1);
  });
});

describe("backpressure and memory", () => {
  /** Streams `total` bytes, writing only as fast as the socket drains; counts what the kernel accepted. */
  function bulkServer(total: number): { server: { port: number; stop(): void }; written: () => number } {
    const chunk = new Uint8Array(64 * 1024).fill(120);
    let written = 0;
    const pump = (socket: import("bun").Socket<{ sent: number }>) => {
      while (socket.data.sent < total) {
        const n = Math.min(chunk.length, total - socket.data.sent);
        const wrote = socket.write(chunk, 0, n);
        if (wrote > 0) {
          socket.data.sent += wrote;
          written += wrote;
        }
        if (wrote < n) return;
      }
    };
    const server = Bun.listen<{ sent: number }>({
      hostname: "127.0.0.1",
      port: 0,
      socket: {
        open(socket) {
          socket.data = { sent: -1 };
        },
        data(socket) {
          if (socket.data.sent >= 0) return;
          socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${total}\r\n\r\n`);
          socket.data.sent = 0;
          pump(socket);
        },
        drain: pump,
      },
    });
    return { server: track(server), written: () => written };
  }

  test("a 200 MB body through a slow consumer: bounded in flight and in memory", async () => {
    const total = 200 * 1024 * 1024;
    const { server, written } = bulkServer(total);
    Bun.gc(true);
    const rssBefore = process.memoryUsage().rss;
    const res = await fresh().request(target(server.port), get(), OPTS);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    let received = 0;
    let maxInFlight = 0;
    let maxRss = 0;
    let stalled = false;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      received += value.length;
      if (!stalled && received > 8 * 1024 * 1024) {
        // Stop reading for a while: the backend must stop too.
        stalled = true;
        await Bun.sleep(300);
        maxInFlight = written() - received;
      } else if (received % (4 * 1024 * 1024) < value.length) {
        maxRss = Math.max(maxRss, process.memoryUsage().rss);
        await Bun.sleep(1);
      }
    }
    expect(received).toBe(total);
    // Kernel socket buffers (a few MB on loopback) plus the 64 KiB queue.
    expect(maxInFlight).toBeLessThan(24 * 1024 * 1024);
    expect(maxRss - rssBefore).toBeLessThan(120 * 1024 * 1024);
  }, 60_000);

  test("a streamed upload reads the body only as fast as the backend takes it", async () => {
    // A backend that never reads: the kernel buffers fill, then we must stop pulling.
    const server = track(
      Bun.listen({
        hostname: "127.0.0.1",
        port: 0,
        socket: {
          open(socket) {
            socket.pause();
          },
          data() {},
        },
      }),
    );
    const chunk = new Uint8Array(64 * 1024);
    let produced = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        produced += chunk.length;
        controller.enqueue(chunk);
      },
    });
    const abort = new AbortController();
    const pending = fresh().request(target(server.port), post(body, 1024 ** 3), {
      ...OPTS,
      signal: abort.signal,
    });
    await Bun.sleep(300);
    const first = produced;
    await Bun.sleep(200);
    expect(produced).toBe(first);
    expect(produced).toBeLessThan(64 * 1024 * 1024);
    abort.abort();
    expect(pending).rejects.toThrow();
  });
  test("an early response ends the upload: the body is cancelled and the socket not reused", async () => {
    let closed = 0;
    const server = track(
      Bun.listen({
        hostname: "127.0.0.1",
        port: 0,
        socket: {
          data(socket) {
            socket.write("HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n");
            socket.pause(); // read nothing more: the upload backs up
          },
          close() {
            closed++;
          },
        },
      }),
    );
    const chunk = new Uint8Array(64 * 1024);
    let cancelled = false;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        controller.enqueue(chunk);
      },
      cancel() {
        cancelled = true;
      },
    });
    const res = await fresh().request(target(server.port), post(body), OPTS);
    expect(res.status).toBe(413);
    await until(() => cancelled && closed === 1);
    expect(client.idleCount).toBe(0);
  });
});

describe("TLS backends", () => {
  let cert: Cert;
  let backend: ReturnType<typeof Bun.serve>;
  beforeAll(async () => {
    cert = await selfSignedCert();
    backend = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      tls: { key: cert.key, cert: cert.cert },
      fetch: (req) =>
        new URL(req.url).pathname === "/big"
          ? new Response(new Uint8Array(20_000_000).fill(98))
          : new Response("secure"),
    });
  });
  afterAll(() => {
    backend.stop(true);
    cert.cleanup();
  });

  test("verify on with the CA: works and the socket is reused", async () => {
    fresh();
    const t = target(backend.port, { ca: cert.cert, verify: true });
    expect(await text((await client.request(t, get(), OPTS)).body)).toBe("secure");
    expect(await text((await client.request(t, get(), OPTS)).body)).toBe("secure");
    expect(client.idleCount).toBe(1);
  });

  test("keep-alive over TLS: one handshake for sequential requests", async () => {
    const server = track(rawServer((conn) => conn.write(OK), { key: cert.key, cert: cert.cert }));
    fresh();
    const t = target(server.port, { ca: cert.cert, verify: true });
    for (let i = 0; i < 3; i++) expect(await text((await client.request(t, get(), OPTS)).body)).toBe("ok");
    expect(server.connections).toBe(1);
  });

  test("a large body streams over TLS with backpressure", async () => {
    const res = await fresh().request(target(backend.port, { verify: false }), get("/big"), OPTS);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    let received = 0;
    for (let r = await reader.read(); !r.done; r = await reader.read()) {
      received += r.value.length;
      if (received < 1_000_000) await Bun.sleep(1);
    }
    expect(received).toBe(20_000_000);
  });

  test("verify on with the CA and serverName localhost", async () => {
    const t = target(backend.port, { ca: cert.cert, serverName: "localhost", verify: true });
    expect(await text((await fresh().request(t, get(), OPTS)).body)).toBe("secure");
  });

  test("verify off: a self-signed certificate is accepted", async () => {
    const t = target(backend.port, { verify: false });
    expect(await text((await fresh().request(t, get(), OPTS)).body)).toBe("secure");
  });

  test("verify on without the CA: CONNECT_FAILED", async () => {
    const err = await failure(fresh().request(target(backend.port, { verify: true }), get(), OPTS));
    expect(err.code).toBe("CONNECT_FAILED");
    expect(err.safeToRetry).toBe(true);
  });

  test("verify on with a name the certificate does not cover: CONNECT_FAILED", async () => {
    const t = target(backend.port, { ca: cert.cert, serverName: "example.com", verify: true });
    const err = await failure(fresh().request(t, get(), OPTS));
    expect(err.code).toBe("CONNECT_FAILED");
  });

  test("a backend that does not speak TLS: CONNECT_FAILED", async () => {
    const plain = track(
      Bun.listen({
        hostname: "127.0.0.1",
        port: 0,
        socket: {
          data(socket) {
            socket.end("HTTP/1.1 400 Bad Request\r\n\r\n");
          },
        },
      }),
    );
    const err = await failure(fresh().request(target(plain.port, { verify: false }), get(), OPTS));
    expect(err.code).toBe("CONNECT_FAILED");
  });
});

describe("abort and cancel", () => {
  test("an already aborted signal rejects at once, without connecting", async () => {
    const server = raw((conn) => conn.write(OK));
    const abort = new AbortController();
    abort.abort(new Error("gone"));
    await expect(
      fresh().request(target(server.port), get(), { ...OPTS, signal: abort.signal }),
    ).rejects.toThrow("gone");
    expect(server.connections).toBe(0);
  });

  test("abort while waiting for the head rejects and closes the socket", async () => {
    const server = raw(() => {});
    const abort = new AbortController();
    const pending = fresh().request(target(server.port), get(), { ...OPTS, signal: abort.signal });
    await until(() => server.requests.length === 1);
    abort.abort();
    await expect(pending).rejects.toMatchObject({ name: "AbortError" });
    await until(() => server.closed === 1);
  });

  test("abort while connecting closes the late socket", async () => {
    const hole = track(await blackhole());
    const abort = new AbortController();
    const pending = fresh().request(target(hole.port), get(), { ...OPTS, signal: abort.signal });
    setTimeout(() => abort.abort(), 50);
    await expect(pending).rejects.toMatchObject({ name: "AbortError" });
    expect(await hole.acceptOne()).toBe("closed");
  }, 10_000);

  test("abort mid-body errors the stream and closes the socket", async () => {
    const server = raw((conn) => conn.write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"));
    const abort = new AbortController();
    const res = await fresh().request(target(server.port), get(), { ...OPTS, signal: abort.signal });
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    expect(new TextDecoder().decode((await reader.read()).value)).toBe("abc");
    abort.abort();
    await expect(reader.read()).rejects.toMatchObject({ name: "AbortError" });
    await until(() => server.closed === 1);
  });

  test("cancelling the body stream closes the socket", async () => {
    const server = raw((conn) => conn.write("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"));
    const res = await fresh().request(target(server.port), get(), OPTS);
    await (res.body as ReadableStream<Uint8Array>).cancel();
    await until(() => server.closed === 1);
    expect(client.idleCount).toBe(0);
  });

  test("abort after the response completed changes nothing", async () => {
    const server = raw((conn) => conn.write(OK));
    const abort = new AbortController();
    const res = await fresh().request(target(server.port), get(), { ...OPTS, signal: abort.signal });
    abort.abort();
    expect(await text(res.body)).toBe("ok");
    expect(client.idleCount).toBe(1);
  });
});

describe("requests on the wire", () => {
  test("request line, headers verbatim and in order, framing by body", async () => {
    const server = raw((conn) => conn.write(OK));
    fresh();
    const fields = ["Host", "example.com", "x-lower", "v1", "X-Dup", "a", "X-Dup", "b"];
    const t = target(server.port);
    await client.request(
      t,
      { method: "GET", target: "/p;x?q=1", fields, body: null, bodyLength: null },
      OPTS,
    );
    await client.request(t, { method: "DELETE", target: "/d", fields, body: null, bodyLength: null }, OPTS);
    await client.request(t, { method: "POST", target: "/e", fields, body: null, bodyLength: null }, OPTS);
    await client.request(t, { ...post(streamOf("abc")), fields }, OPTS);
    const wire = "Host: example.com\r\nx-lower: v1\r\nX-Dup: a\r\nX-Dup: b\r\n";
    expect(server.requests.map((r) => r.head)).toEqual([
      `GET /p;x?q=1 HTTP/1.1\r\n${wire}\r\n`,
      `DELETE /d HTTP/1.1\r\n${wire}\r\n`,
      `POST /e HTTP/1.1\r\n${wire}Content-Length: 0\r\n\r\n`,
      `POST /up HTTP/1.1\r\n${wire}Transfer-Encoding: chunked\r\n\r\n`,
    ]);
    expect(new TextDecoder().decode(server.requests[3]?.body)).toBe("3\r\nabc\r\n0\r\n\r\n");
  });

  test("Latin-1 header values go out byte for byte", async () => {
    const server = raw((conn) => conn.write(OK));
    await fresh().request(target(server.port), get("/", [["X-Name", "caf\xe9"]]), OPTS);
    expect(server.requests[0]?.head).toContain("X-Name: caf\xe9\r\n");
  });

  test.each([
    ["CRLF in a value", get("/", [["X-A", "a\r\nEvil: 1"]])],
    ["LF in a name", get("/", [["X\nA", "a"]])],
    ["space in the target", get("/a b")],
  ])("%s: BAD_REQUEST, nothing sent", async (_name, req) => {
    const server = raw((conn) => conn.write(OK));
    const err = await failure(fresh().request(target(server.port), req, OPTS));
    expect(err.code).toBe("BAD_REQUEST");
    expect(server.connections).toBe(0);
  });

  test.each([
    ["shorter", 10],
    ["longer", 2],
  ])("a stream body %s than bodyLength: BAD_REQUEST", async (_name, length) => {
    const server = raw((conn) => conn.write(OK));
    const err = await failure(fresh().request(target(server.port), post(streamOf("abc"), length), OPTS));
    expect(err.code).toBe("BAD_REQUEST");
  });

  test("a request body stream that errors: BAD_REQUEST and the socket is closed", async () => {
    const server = raw((conn) => conn.write(OK));
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        controller.error(new Error("client went away"));
      },
    });
    const err = await failure(fresh().request(target(server.port), post(body), OPTS));
    expect(err.code).toBe("BAD_REQUEST");
    await until(() => server.closed === 1);
  });
});

describe("Bun socket behaviour this client relies on", () => {
  test("the Uint8Array passed to data() is not reused after the callback", async () => {
    const server = raw((conn) => {
      for (let i = 0; i < 20; i++) setTimeout(() => conn.write(new Uint8Array(1000).fill(65 + i)), i * 3);
    });
    const seen: { data: Uint8Array; copy: Uint8Array }[] = [];
    const socket = await Bun.connect({
      hostname: "127.0.0.1",
      port: server.port,
      socket: {
        data(_socket, data) {
          seen.push({ data, copy: data.slice() });
        },
      },
    });
    socket.write("GET / HTTP/1.1\r\n\r\n");
    await until(() => seen.reduce((n, s) => n + s.data.length, 0) === 20_000);
    socket.end();
    for (const { data, copy } of seen) expect(Buffer.compare(data, copy)).toBe(0);
  });
});
