/**
 * tls-passthrough listeners end to end: real openssl servers and clients
 * through tether, which never decrypts; raw TCP peers for the PROXY
 * protocol, half-close, timeouts, bulk transfer and failover.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { createAudit } from "../../src/audit.ts";
import type { ConfigInput } from "../../src/config/schema.ts";
import type { PassthroughHandle } from "../../src/passthrough/listener.ts";
import { parseProxyHeader, V2_SIGNATURE } from "../../src/passthrough/proxy-protocol.ts";
import { startTether, type Tether } from "../../src/server/app.ts";
import {
  concat,
  makeCert,
  peerCn,
  pump,
  type RawConn,
  rawClient,
  rawServer,
  readHexFixture,
  type SServer,
  sClient,
  sClientGet,
  sServer,
} from "../passthrough/support.ts";
import { closedPort } from "../support/backends.ts";
import { config, memoryLogger, tempDir } from "../support/tether.ts";

const HELLO = readHexFixture("client-openssl-tls12-new.hex");
const text = (s: string) => new TextEncoder().encode(s);

interface Started {
  tether: Tether;
  log: ReturnType<typeof memoryLogger>;
  audit: Record<string, unknown>[];
  port(listener: string): number;
  stats(listener: string): ReturnType<PassthroughHandle["stats"]>;
  stop(): Promise<void>;
}

function start(input: ConfigInput): Started {
  const log = memoryLogger();
  const audit: Record<string, unknown>[] = [];
  const tether = startTether(config(input), log, {
    audit: createAudit(undefined, (line) => audit.push(JSON.parse(line))),
  });
  const handle = (name: string) => tether.listeners.get(name) as PassthroughHandle;
  return {
    tether,
    log,
    audit,
    port: (name) => handle(name).server.port ?? 0,
    stats: (name) => handle(name).stats(),
    stop: () => tether.stop(200),
  };
}

const listener = (name: string, pool: string, extra: Record<string, unknown> = {}) => ({
  name,
  protocol: "tls-passthrough" as const,
  address: "127.0.0.1:0",
  pool,
  ...extra,
});
const tcp = (id: string, port: number) => ({ id, url: `tcp://127.0.0.1:${port}` });

/** Resolves with the ms it took tether to close (FIN or close) the client's connection; rejects after ms. */
async function closedWithin(c: RawConn, ms: number): Promise<number> {
  const t0 = performance.now();
  while (!c.gotFin && !c.closed) {
    if (performance.now() - t0 > ms) throw new Error(`still open after ${ms} ms`);
    await Bun.sleep(5);
  }
  return performance.now() - t0;
}

describe("TLS sessions through passthrough (openssl s_server backends, s_client clients)", () => {
  let dir: string;
  let servers: SServer[];
  let proxy: Started;

  beforeAll(async () => {
    dir = tempDir();
    const certs = await Promise.all(["app-1", "app-2", "app-3"].map((cn) => makeCert(dir, cn)));
    servers = await Promise.all(certs.map((c) => sServer(c)));
    const backends = servers.map((s, i) => tcp(`app-${i + 1}`, s.port));
    const one = (i: number) => ({ backends: backends.slice(i, i + 1) });
    proxy = start({
      listeners: [
        listener("sticky", "sticky"),
        listener("plain", "plain"),
        listener("fallback", "fallback"),
        listener("sni", "pc", {
          routes: [
            { host: "a.test", pool: "pa" },
            { host: "*.b.test", pool: "pb" },
          ],
        }),
      ],
      pools: {
        sticky: { backends, persistence: [{ type: "tls-session" }] },
        plain: { backends },
        fallback: { backends, persistence: [{ type: "tls-session" }, { type: "client-ip" }] },
        pa: one(0),
        pb: one(1),
        pc: one(2),
      },
    });
  });

  afterAll(async () => {
    await proxy.stop();
    await Promise.all(servers.map((s) => s.stop()));
  });

  test("each passthrough listener logs one 'listening' line, like HTTP listeners", () => {
    const lines = proxy.log.lines.filter((l) => l.msg === "listening");
    expect(lines.map((l) => l.name).sort()).toEqual(["fallback", "plain", "sni", "sticky"]);
    for (const l of lines) {
      expect(l).toMatchObject({ protocol: "tls-passthrough", address: "127.0.0.1" });
      expect(l.port).toBeGreaterThan(0);
    }
  });

  test("a resumed TLS 1.2 session goes back to the backend that issued it, 20 times in a row", async () => {
    const port = proxy.port("sticky");
    const sess = join(dir, "sticky.pem");
    const first = await sClient(port, "-tls1_2", "-no_ticket", "-sess_out", sess);
    expect(first).toContain("New, TLSv1.2");
    const issuer = peerCn(first);
    const sessionId = /Session-ID: ([0-9A-F]{64})/.exec(first)?.[1];
    expect(sessionId).toBeDefined();
    const before = proxy.stats("sticky");
    for (let i = 0; i < 20; i++) {
      const out = await sClient(port, "-tls1_2", "-no_ticket", "-sess_in", sess);
      expect(out).toContain("Reused, TLSv1.2");
      expect(peerCn(out)).toBe(issuer);
    }
    const after = proxy.stats("sticky");
    expect(after.resumed - before.resumed).toBe(20);
    // The session ID never reaches a log or the audit log.
    const written = JSON.stringify([proxy.log.lines, proxy.audit]).toLowerCase();
    expect(written).not.toContain((sessionId as string).toLowerCase());
  });

  test("a session whose backend goes into maintenance moves to another backend, audited as repinned", async () => {
    const port = proxy.port("sticky");
    const sess = join(dir, "maint.pem");
    const first = await sClient(port, "-tls1_2", "-no_ticket", "-sess_out", sess);
    const issuer = peerCn(first) as string;
    const backend = proxy.tether.runtime.pools.get("sticky")?.get(issuer);
    if (!backend) throw new Error(`no backend ${issuer}`);
    backend.state = "maint";
    try {
      const out = await sClient(port, "-tls1_2", "-no_ticket", "-sess_in", sess);
      // Another backend cannot resume the issuer's session: a full handshake there.
      expect(out).toContain("New, TLSv1.2");
      expect(peerCn(out)).not.toBe(issuer);
      expect(proxy.audit.at(-1)).toMatchObject({
        event: "session.repinned",
        listener: "sticky",
        rule: "tls-session",
        from: issuer,
        to: peerCn(out),
        why: "backend-unavailable",
      });
    } finally {
      backend.state = "ready";
    }
  });

  test("control: without the tls-session rule the same resumptions scatter, so most start over", async () => {
    const port = proxy.port("plain");
    const sess = join(dir, "plain.pem");
    await sClient(port, "-tls1_2", "-no_ticket", "-sess_out", sess);
    let reused = 0;
    for (let i = 0; i < 20; i++) {
      if ((await sClient(port, "-tls1_2", "-no_ticket", "-sess_in", sess)).includes("Reused, TLSv1.2"))
        reused++;
    }
    // With three backends a random placement resumes about a third of the time; 20 of 20 has odds 3^-20.
    expect(reused).toBeLessThan(20);
  });

  test("TLS 1.3 clients fall back to the next rule (client-ip): one backend, nothing learned", async () => {
    const port = proxy.port("fallback");
    const sess = join(dir, "tls13.pem");
    const before = proxy.stats("fallback");
    const seen = new Set<string | null>();
    for (let i = 0; i < 6; i++) {
      const args = i === 0 ? ["-sess_out", sess] : ["-sess_in", sess];
      const out = await sClientGet(port, "-tls1_3", ...args);
      expect(out).toContain("TLSv1.3");
      seen.add(peerCn(out));
    }
    expect(seen.size).toBe(1);
    const after = proxy.stats("fallback");
    expect(after.learnedNew + after.resumed).toBe(before.learnedNew + before.resumed);
  });

  test("SNI picks the pool through the listener's routes; no match and no SNI take the default pool", async () => {
    const port = proxy.port("sni");
    const cases: [string[], string][] = [
      [["-servername", "a.test"], "app-1"],
      [["-servername", "A.Test"], "app-1"],
      [["-servername", "x.b.test"], "app-2"],
      [["-servername", "b.test"], "app-3"],
      [["-servername", "other.test"], "app-3"],
      [["-noservername"], "app-3"],
    ];
    for (const [args, want] of cases)
      expect(`${args.join(" ")} → ${peerCn(await sClient(port, ...args))}`).toBe(
        `${args.join(" ")} → ${want}`,
      );
  });

  test("routes change on reload without reopening the listener", async () => {
    const port = proxy.port("sni");
    const next = config({
      listeners: [
        listener("sticky", "sticky"),
        listener("plain", "plain"),
        listener("fallback", "fallback"),
        listener("sni", "pc", { routes: [{ host: "other.test", pool: "pa" }] }),
      ],
      pools: Object.fromEntries(
        Object.entries(proxy.tether.runtime.config.pools).map(([name, p]) => [
          name,
          { backends: p.backends.map((b) => ({ id: b.id, url: b.url })), persistence: p.persistence },
        ]),
      ),
    });
    await proxy.tether.reload(next);
    expect(proxy.port("sni")).toBe(port);
    expect(peerCn(await sClient(port, "-servername", "other.test"))).toBe("app-1");
    expect(peerCn(await sClient(port, "-servername", "a.test"))).toBe("app-3");
  });
});

describe("PROXY protocol", () => {
  let proxy: Started;
  const backends = Array.from({ length: 4 }, () => rawServer((c) => c.socket.write("hello from backend")));
  const [out1, out2, in1, in2] = backends as [
    ReturnType<typeof rawServer>,
    ReturnType<typeof rawServer>,
    ReturnType<typeof rawServer>,
    ReturnType<typeof rawServer>,
  ];

  beforeAll(() => {
    proxy = start({
      listeners: [
        listener("out-v1", "v1"),
        listener("out-v2", "v2"),
        listener("in", "in", { proxyProtocol: true, helloTimeoutMs: 1000 }),
      ],
      pools: {
        v1: { backends: [tcp("r1", out1.port)], sendProxyProtocol: "v1" },
        v2: { backends: [tcp("r2", out2.port)], sendProxyProtocol: "v2" },
        in: {
          backends: [tcp("r3", in1.port), tcp("r4", in2.port)],
          sendProxyProtocol: "v2",
          persistence: [{ type: "client-ip" }],
          hashBalanceFactor: 0,
        },
      },
    });
  });

  afterAll(async () => {
    await proxy.stop();
    for (const b of backends) b.stop();
  });

  test("v1 to the backend: the client's address and port, then the ClientHello byte for byte", async () => {
    const c = await rawClient(proxy.port("out-v1"), HELLO);
    await c.waitFor(18);
    expect(c.text()).toBe("hello from backend");
    const got = out1.conns.at(-1) as RawConn;
    const expected = `PROXY TCP4 127.0.0.1 127.0.0.1 ${c.socket.localPort} ${proxy.port("out-v1")}\r\n`;
    await got.waitFor(expected.length + HELLO.length);
    expect(Buffer.from(got.received())).toEqual(Buffer.from(concat(text(expected), HELLO)));
    c.socket.end();
  });

  test("v2 to the backend: a binary header that parses back to the client's address", async () => {
    const c = await rawClient(proxy.port("out-v2"), HELLO);
    await c.waitFor(18);
    const got = out2.conns.at(-1) as RawConn;
    await got.waitFor(28 + HELLO.length);
    const bytes = got.received();
    const r = parseProxyHeader(bytes);
    if (r.kind !== "header") throw new Error(JSON.stringify(r));
    expect(r.header.source).toEqual({ address: "127.0.0.1", port: c.socket.localPort });
    expect(r.header.destination).toEqual({ address: "127.0.0.1", port: proxy.port("out-v2") });
    expect(Buffer.from(bytes.subarray(r.length))).toEqual(Buffer.from(HELLO));
    c.socket.end();
  });

  /** Which backend a connection claiming `ip` reached, and the address that backend was told. */
  async function via(header: Uint8Array): Promise<{ backend: string; source: string | undefined }> {
    const counts = [in1.conns.length, in2.conns.length];
    const c = await rawClient(proxy.port("in"), concat(header, HELLO));
    await c.waitFor(18);
    c.socket.end();
    const i = in1.conns.length > (counts[0] as number) ? 0 : 1;
    const conn = (i === 0 ? in1 : in2).conns.at(-1) as RawConn;
    await conn.waitFor(16);
    const r = parseProxyHeader(conn.received());
    return {
      backend: i === 0 ? "r3" : "r4",
      source: r.kind === "header" ? r.header.source?.address : undefined,
    };
  }

  const v1 = (ip: string) => text(`PROXY TCP4 ${ip} 192.0.2.10 40000 443\r\n`);
  const v2 = (ip: string) => {
    const o = ip.split(".").map(Number);
    return new Uint8Array([...V2_SIGNATURE, 0x21, 0x11, 0, 12, ...o, 192, 0, 2, 10, 0x9c, 0x40, 0x01, 0xbb]);
  };

  test("v1 and v2 from a balancer in front feed the client-ip rule and reach the backend", async () => {
    const placed = new Map<string, string>();
    for (let i = 1; i <= 12; i++) {
      const ip = `203.0.113.${i * 7}`;
      const a = await via(v1(ip));
      const b = await via(v2(ip));
      expect(a.source).toBe(ip);
      expect(b.source).toBe(ip);
      // One address, one backend, whichever header version carried it.
      expect(b.backend).toBe(a.backend);
      placed.set(ip, a.backend);
    }
    expect(new Set(placed.values()).size).toBe(2);
  });

  test("a v2 LOCAL header (the balancer's own check) keeps the real peer address", async () => {
    const local = new Uint8Array([...V2_SIGNATURE, 0x20, 0x00, 0, 0]);
    expect((await via(local)).source).toBe("127.0.0.1");
  });

  test("bad or missing headers are closed, counted and audited; the listener keeps serving", async () => {
    const port = proxy.port("in");
    const bad: [string, Uint8Array][] = [
      ["bad-address", text("PROXY TCP4 1.2.3.400 192.0.2.10 1 2\r\n")],
      ["unsupported-family", new Uint8Array([...V2_SIGNATURE, 0x21, 0x12, 0, 12, ...new Array(12).fill(1)])],
      ["not-proxy", HELLO],
      ["too-long", text(`PROXY UNKNOWN ${"x".repeat(120)}`)],
    ];
    const before = proxy.stats("in").rejected;
    for (const [reason, bytes] of bad) {
      const c = await rawClient(port, bytes);
      await closedWithin(c, 1000);
      expect(c.bytes).toBe(0);
      expect(proxy.stats("in").rejected[reason]).toBe((before[reason] ?? 0) + 1);
      expect(proxy.audit.at(-1)).toMatchObject({
        event: "persistence.rejected",
        listener: "in",
        input: "proxy-header",
        reason: "malformed",
        detail: reason,
      });
    }
    expect((await via(v1("198.51.100.1"))).source).toBe("198.51.100.1");
  });
});

describe("the connection itself", () => {
  let proxy: Started;
  /** What the raw backend does with each new connection; tests set it. */
  let onBackend: (c: RawConn) => void = () => {};
  const backend = rawServer((c) => onBackend(c));
  const live = rawServer((c) => c.socket.write("live"));
  const dead = closedPort();

  beforeAll(() => {
    proxy = start({
      listeners: [
        listener("raw", "raw", { helloTimeoutMs: 300, clientIdleMs: 1000 }),
        listener("retry", "retry"),
        listener("none", "none"),
      ],
      pools: {
        raw: { backends: [tcp("raw", backend.port)] },
        retry: { backends: [tcp("dead", dead), tcp("live", live.port)], retries: 2, maxFails: 1 },
        none: { backends: [tcp("gone", closedPort())], retries: 0 },
      },
    });
  });

  afterAll(async () => {
    await proxy.stop();
    backend.stop();
    live.stop();
  });

  test("garbage instead of a ClientHello is closed at once and audited; the listener keeps serving", async () => {
    const port = proxy.port("raw");
    const garbage: [string, Uint8Array][] = [
      ["not-tls", text("GET / HTTP/1.1\r\nHost: x\r\n\r\n")],
      ["too-large", new Uint8Array([22, 3, 1, 0x40, 0, 1, 0, 0x4e, 0x20, ...new Array(100).fill(0)])],
      ["bad-server-name", HELLO.map((b, i) => (i === Buffer.from(HELLO).indexOf("a.test") ? 0x20 : b))],
    ];
    for (const [reason, bytes] of garbage) {
      const c = await rawClient(port, bytes);
      expect(await closedWithin(c, 250)).toBeLessThan(250);
      expect(proxy.audit.at(-1)).toMatchObject({
        event: "persistence.rejected",
        listener: "raw",
        input: "client-hello",
        reason: "malformed",
      });
      expect(proxy.audit.at(-1)?.detail).toBe(reason);
    }
    // Still serving.
    onBackend = (b) => b.socket.write("ok");
    const c = await rawClient(port, HELLO);
    await c.waitFor(2);
    expect(c.text()).toBe("ok");
    c.socket.end();
  });

  test("a slowloris ClientHello is closed at helloTimeoutMs", async () => {
    const c = await rawClient(proxy.port("raw"));
    const t0 = performance.now();
    let i = 0;
    const drip = setInterval(() => {
      if (!c.closed && i < HELLO.length) c.socket.write(HELLO.subarray(i, ++i));
    }, 20);
    await closedWithin(c, 2000);
    clearInterval(drip);
    const ms = performance.now() - t0;
    expect(ms).toBeGreaterThanOrEqual(280);
    expect(ms).toBeLessThan(800);
    expect(proxy.audit.at(-1)).toMatchObject({
      event: "persistence.rejected",
      reason: "timeout",
      input: "client-hello",
    });
  });

  test("half-close: the client's FIN reaches the backend and the backend's answer still reaches the client", async () => {
    onBackend = (b) => {
      b.onFin = () => {
        // The backend answers only after it has seen the end of the request.
        b.socket.write(`got ${b.bytes} bytes`);
        b.socket.shutdown();
      };
    };
    const c = await rawClient(proxy.port("raw"), concat(HELLO, text("request")));
    await Bun.sleep(50);
    c.socket.shutdown();
    const want = `got ${HELLO.length + 7} bytes`;
    await c.waitFor(want.length);
    expect(c.text()).toBe(want);
    await closedWithin(c, 1000);
  });

  test("half-close the other way: after the backend's FIN the client can still send", async () => {
    let conn: RawConn | null = null;
    onBackend = (b) => {
      conn = b;
      b.socket.write("bye");
      b.socket.shutdown();
    };
    const c = await rawClient(proxy.port("raw"), HELLO);
    await c.waitFor(3);
    await Bun.sleep(50);
    expect(c.gotFin).toBe(true);
    c.socket.write("still talking");
    const b = conn as unknown as RawConn;
    await b.waitFor(HELLO.length + 13);
    expect(b.text().endsWith("still talking")).toBe(true);
    c.socket.shutdown();
    await closedWithin(c, 1000);
  });

  test("a connection silent for clientIdleMs is closed", async () => {
    onBackend = (b) => b.socket.write("x");
    const c = await rawClient(proxy.port("raw"), HELLO);
    await c.waitFor(1);
    const ms = await closedWithin(c, 3000);
    expect(ms).toBeGreaterThanOrEqual(900);
    expect(ms).toBeLessThan(1600);
  });

  test("50 MB each way at once, byte-exact, with bounded buffering", async () => {
    const block = new Uint8Array(64 * 1024).map(() => (Math.random() * 256) | 0);
    const count = 800; // 52 MB
    const total = block.length * count;
    const hash = (n: number) => {
      const h = new Bun.CryptoHasher("sha256");
      for (let i = 0; i < n; i++) h.update(block);
      return h.digest("hex");
    };
    const expected = hash(count);
    const upHash = new Bun.CryptoHasher("sha256");
    const downHash = new Bun.CryptoHasher("sha256");
    let skip = HELLO.length;
    let serverSide: RawConn | null = null;
    onBackend = (b) => {
      serverSide = b;
      b.keep = false;
      b.onData = (_c, d) => {
        const rest = d.subarray(Math.min(skip, d.length));
        skip -= d.length - rest.length;
        upHash.update(rest);
      };
      void pump(b, block, count);
    };
    const rss0 = process.memoryUsage().rss;
    const t0 = performance.now();
    const c = await rawClient(proxy.port("raw"), HELLO, false);
    let paused = false;
    c.onData = (_c, d) => {
      downHash.update(d);
      if (!paused && c.bytes > 8e6) {
        // A slow reader for a moment: tether must queue a little and pause the backend, not buffer the stream.
        paused = true;
        c.socket.pause();
        setTimeout(() => c.socket.resume(), 300);
      }
    };
    await pump(c, block, count);
    await c.waitFor(total, 20_000);
    await (serverSide as unknown as RawConn).waitFor(HELLO.length + total, 20_000);
    const seconds = (performance.now() - t0) / 1000;
    expect(downHash.digest("hex")).toBe(expected);
    expect(upHash.digest("hex")).toBe(expected);
    const stats = proxy.stats("raw");
    // tether held at most a few reads for the slow reader, never the stream.
    expect(stats.peakQueued).toBeGreaterThan(0);
    expect(stats.peakQueued).toBeLessThan(4 * 1024 * 1024);
    console.log(
      `passthrough: ${((2 * total) / 1e6).toFixed(0)} MB in ${seconds.toFixed(2)} s ` +
        `(${((2 * total) / 1e6 / seconds).toFixed(0)} MB/s both ways), peak queued ${stats.peakQueued} B, ` +
        `rss +${((process.memoryUsage().rss - rss0) / 1e6).toFixed(0)} MB (test process, both peers included)`,
    );
    c.socket.end();
  });

  test("a backend that refuses the connection is retried on the next one, and marked down", async () => {
    const port = proxy.port("retry");
    for (let i = 0; i < 5; i++) {
      const c = await rawClient(port, HELLO);
      await c.waitFor(4);
      expect(c.text()).toBe("live");
      c.socket.end();
    }
    const stats = proxy.stats("retry");
    // maxFails 1: after the first refusal the dead backend is skipped, not tried again each time.
    expect(stats.connectFailures).toBe(1);
    expect(proxy.tether.runtime.pools.get("retry")?.get("dead")?.down).toBe(true);
    expect(proxy.log.lines.some((l) => l.msg === "upstream failed" && l.backend === "dead")).toBe(true);
  });

  test("when no backend can be reached the client is closed", async () => {
    const c = await rawClient(proxy.port("none"), HELLO);
    await closedWithin(c, 2000);
    expect(c.bytes).toBe(0);
    expect(proxy.stats("none").noBackend).toBe(1);
  });
});

describe("connect timeout", () => {
  const python = Bun.which("python3");

  test.skipIf(!python)(
    "a backend that never accepts is abandoned after connectTimeoutMs and the next one tried",
    async () => {
      // A listening socket with a full accept queue: the kernel drops further SYNs, so connects hang.
      const hole = Bun.spawn(
        [
          python as string,
          "-c",
          "import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen(0)\nprint(s.getsockname()[1],flush=True)\ntime.sleep(20)",
        ],
        { stdout: "pipe" },
      );
      const reader = (hole.stdout as ReadableStream<Uint8Array>).getReader();
      const holePort = Number(new TextDecoder().decode((await reader.read()).value).trim());
      const filler = await rawClient(holePort);
      const live = rawServer((c) => c.socket.write("live"));
      const proxy = start({
        listeners: [listener("slow", "slow")],
        pools: {
          slow: {
            backends: [tcp("hole", holePort), tcp("live", live.port)],
            connectTimeoutMs: 200,
            persistence: [{ type: "client-ip" }],
          },
        },
      });
      try {
        // Whichever backend client-ip picks first, every connection ends up on the live one.
        for (let i = 0; i < 3; i++) {
          const t0 = performance.now();
          const c = await rawClient(proxy.port("slow"), HELLO);
          await c.waitFor(4, 3000);
          expect(c.text()).toBe("live");
          expect(performance.now() - t0).toBeLessThan(1500);
          c.socket.end();
        }
        const failed = proxy.log.lines.filter((l) => l.msg === "upstream failed");
        for (const l of failed) expect(l).toMatchObject({ backend: "hole", code: "CONNECT_TIMEOUT" });
      } finally {
        await proxy.stop();
        live.stop();
        filler.socket.terminate();
        hole.kill();
      }
    },
  );
});

describe("shutdown", () => {
  test("stop() stops accepting, then closes open connections after the grace period", async () => {
    const backend = rawServer((c) => c.socket.write("hi"));
    const proxy = start({
      listeners: [listener("s", "s")],
      pools: { s: { backends: [tcp("b", backend.port)] } },
    });
    const port = proxy.port("s");
    const c = await rawClient(port, HELLO);
    await c.waitFor(2);
    const t0 = performance.now();
    const stopped = proxy.tether.stop(300);
    await Bun.sleep(50);
    await expect(rawClient(port, HELLO)).rejects.toThrow();
    await stopped;
    await closedWithin(c, 500);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(280);
    expect(backend.conns[0]?.closed || backend.conns[0]?.gotFin).toBe(true);
    backend.stop();
  });
});

describe("active health checks for tcp:// pools", () => {
  test("a TCP connect (with a PROXY LOCAL header when the pool sends PROXY) marks backends down and up", async () => {
    const up = rawServer();
    const downPort = closedPort();
    const proxy = start({
      listeners: [listener("hc", "hc")],
      pools: {
        hc: {
          backends: [tcp("up", up.port), tcp("down", downPort)],
          sendProxyProtocol: "v2",
          healthCheck: { intervalMs: 100, timeoutMs: 200, rise: 1, fall: 1 },
        },
      },
    });
    let revived: { stop(closeActive?: boolean): void } | null = null;
    try {
      const pool = () => proxy.tether.runtime.pools.get("hc");
      const deadline = Date.now() + 2000;
      while (Date.now() < deadline && !pool()?.get("down")?.activeDown) await Bun.sleep(20);
      expect(pool()?.get("down")?.activeDown).toBe(true);
      expect(pool()?.get("up")?.activeDown).toBe(false);
      expect(
        proxy.audit.some((a) => a.event === "backend.state" && a.backend === "down" && a.health === "down"),
      ).toBe(true);
      // The check said "LOCAL" in PROXY v2 before closing.
      const check = up.conns[0] as RawConn;
      await check.waitFor(16);
      const r = parseProxyHeader(check.received());
      expect(r.kind === "header" && r.header.command).toBe("local");
      // The backend comes back on the same port.
      revived = Bun.listen({ hostname: "127.0.0.1", port: downPort, socket: { data() {} } });
      const until = Date.now() + 2000;
      while (Date.now() < until && pool()?.get("down")?.activeDown) await Bun.sleep(20);
      expect(pool()?.get("down")?.activeDown).toBe(false);
    } finally {
      await proxy.stop();
      up.stop();
      revived?.stop(true);
    }
  });
});

describe("three `s_server -www -no_ticket` backends, each with its own certificate subject", () => {
  const CNS = ["nt-1", "nt-2", "nt-3"];
  const HELLO_TIMEOUT_MS = 1200;
  let dir: string;
  let servers: SServer[];
  let proxy: Started;

  beforeAll(async () => {
    dir = tempDir();
    const certs = await Promise.all(CNS.map((cn) => makeCert(dir, cn)));
    servers = await Promise.all(certs.map((c) => sServer(c, "-no_ticket")));
    const backends = servers.map((s, i) => tcp(CNS[i] as string, s.port));
    proxy = start({
      listeners: [
        listener("only", "only"),
        listener("guarded", "guarded", { helloTimeoutMs: HELLO_TIMEOUT_MS }),
      ],
      pools: {
        // tls-session and nothing else: a connection it does not place goes to a random point on the ring.
        only: { backends, persistence: [{ type: "tls-session" }] },
        guarded: { backends, persistence: [{ type: "tls-session" }, { type: "client-ip" }] },
      },
    });
  });

  afterAll(async () => {
    await proxy.stop();
    await Promise.all(servers.map((s) => s.stop()));
  });

  test("directly, each backend shows its own subject and issues a session ID but no ticket", async () => {
    const outs = await Promise.all(servers.map((s) => sClient(s.port, "-tls1_2")));
    expect(outs.map(peerCn)).toEqual(CNS);
    for (const out of outs) {
      expect(out).toContain("New, TLSv1.2");
      expect(out).toMatch(/Session-ID: [0-9A-F]{64}/);
      // The client offers tickets here; -no_ticket backends decline, so only the session ID can resume.
      expect(out).not.toContain("TLS session ticket");
    }
  });

  test("with only the tls-session rule, a resumed session lands on its issuer 20 times out of 20 while fresh sessions spread", async () => {
    const port = proxy.port("only");
    const sess = join(dir, "only.pem");
    const first = await sClient(port, "-tls1_2", "-no_ticket", "-sess_out", sess);
    expect(first).toContain("New, TLSv1.2");
    const issuer = peerCn(first);
    expect(CNS).toContain(String(issuer));
    const before = proxy.stats("only");
    const resumedOn: (string | null)[] = [];
    const freshOn: (string | null)[] = [];
    // Interleaved and concurrent: each batch is 2 resumptions and 3 fresh sessions at once.
    for (let batch = 0; batch < 10; batch++) {
      const resumes = Array.from({ length: 2 }, () =>
        sClient(port, "-tls1_2", "-no_ticket", "-sess_in", sess),
      );
      const fresh = Array.from({ length: 3 }, () => sClient(port, "-tls1_2", "-no_ticket"));
      for (const out of await Promise.all(resumes)) {
        expect(out).toContain("Reused, TLSv1.2");
        resumedOn.push(peerCn(out));
      }
      for (const out of await Promise.all(fresh)) {
        expect(out).toContain("New, TLSv1.2");
        freshOn.push(peerCn(out));
      }
    }
    expect(resumedOn).toEqual(new Array(20).fill(issuer));
    expect(freshOn).toHaveLength(30);
    // A random ring point for each: all 30 on one of three backends has odds 3 · 3^-30.
    expect(new Set(freshOn).size).toBeGreaterThanOrEqual(2);
    const after = proxy.stats("only");
    expect(after.resumed - before.resumed).toBe(20);
    expect(after.learnedNew - before.learnedNew).toBe(30);
  });

  test("a garbage first packet, a truncated ClientHello and a ClientHello sent one byte a second are each closed within the timeout while other clients carry on", async () => {
    const port = proxy.port("guarded");
    const before = proxy.stats("guarded");
    const auditFrom = proxy.audit.length;
    const t0 = performance.now();
    const garbage = await rawClient(port, text("SSH-2.0-OpenSSH_9.2p1\r\n"));
    // The record header promises the whole hello; only its first 60 bytes ever come.
    const truncated = await rawClient(port, HELLO.subarray(0, 60));
    const drip = await rawClient(port, HELLO.subarray(0, 1));
    let sent = 1;
    const dripping = setInterval(() => {
      if (!drip.closed && !drip.gotFin && sent < HELLO.length)
        drip.socket.write(HELLO.subarray(sent, ++sent));
    }, 1000);
    try {
      expect(await closedWithin(garbage, 250)).toBeLessThan(250);
      expect(garbage.bytes).toBe(0);

      // A real client meanwhile: a full handshake with a backend, well before the other two time out.
      const out = await sClient(port, "-tls1_2", "-no_ticket");
      expect(out).toContain("New, TLSv1.2");
      expect(CNS).toContain(String(peerCn(out)));
      const normalDone = performance.now() - t0;
      expect(normalDone).toBeLessThan(HELLO_TIMEOUT_MS - 200);
      for (const c of [truncated, drip]) expect(c.closed || c.gotFin).toBe(false);

      for (const c of [truncated, drip]) {
        await closedWithin(c, HELLO_TIMEOUT_MS + 1000);
        const at = performance.now() - t0;
        expect(at).toBeGreaterThanOrEqual(HELLO_TIMEOUT_MS - 50);
        expect(at).toBeLessThan(HELLO_TIMEOUT_MS + 600);
        expect(c.bytes).toBe(0);
      }
      // The drip got its second byte in (one a second) before the deadline, not the whole hello.
      expect(sent).toBe(2);
    } finally {
      clearInterval(dripping);
    }
    const after = proxy.stats("guarded");
    expect((after.rejected.timeout ?? 0) - (before.rejected.timeout ?? 0)).toBe(2);
    const rejected = proxy.audit
      .slice(auditFrom)
      .filter((a) => a.event === "persistence.rejected" && a.listener === "guarded");
    expect(rejected.map((a) => a.reason).sort()).toEqual(["malformed", "timeout", "timeout"]);
    for (const a of rejected) expect(a.input).toBe("client-hello");
  });
});
