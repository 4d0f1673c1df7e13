/**
 * HTTP/2 and HTTP/3 towards clients: persistence works as over HTTP/1.1, with
 * real clients (curl --http2, node:http2, nghttp, Chromium over h2 and over
 * h3, curl --http2-prior-knowledge over h2c) in front of the demo backends,
 * whose visit counter climbs only while a session stays on one backend.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { Server } from "bun";
import type { ConfigInput } from "../../src/config/schema.ts";
import { startDemoBackend } from "../../src/demo/backend.ts";
import { backend, type TestBackend } from "../support/backends.ts";
import { run } from "../support/certs.ts";
import { launchChromium, quicFlags } from "../support/chromium.ts";
import { tempDir } from "../support/files.ts";
import { h2Request } from "../support/h2.ts";
import { REPO, type Running, startInProcess } from "../support/tether.ts";

const CERT = join(REPO, "certs/dev.pem");
/** Run in the page: the protocol its navigation went over ("h2", "h3", "http/1.1"). */
const NEXT_HOP_PROTOCOL = 'performance.getEntriesByType("navigation")[0].nextHopProtocol';
const KEY = join(REPO, "certs/dev-key.pem");

describe("persistence over HTTP/2 and HTTP/3", () => {
  let demo: Server<undefined>[] = [];
  let echo: TestBackend;
  let proxy: Running;
  let origin: string;

  beforeAll(() => {
    demo = ["b1", "b2", "b3"].map((id) => startDemoBackend(id, "127.0.0.1:0"));
    // Answers with the Cookie line it received and two cookies of its own.
    echo = backend("echo", (req) => {
      const headers = new Headers();
      headers.append("set-cookie", "app_a=1; Path=/");
      headers.append("set-cookie", "app_b=2; Path=/");
      headers.set("alt-svc", 'h3=":1"; ma=60');
      return new Response(`cookie=${req.headers.get("cookie")}`, { headers });
    });
    proxy = startInProcess({
      listeners: [
        {
          name: "secure",
          protocol: "https",
          address: "127.0.0.1:0",
          pool: "demo",
          routes: [{ pathPrefix: "/echo", pool: "echo" }],
          tls: { certificates: [{ cert: CERT, key: KEY }] },
          protocols: ["http/1.1", "h2", "h3"],
        },
      ],
      pools: {
        demo: {
          backends: demo.map((s, i) => ({ id: `b${i + 1}`, url: `http://127.0.0.1:${s.port}` })),
          persistence: [{ type: "cookie", mode: "insert", name: "TETHER" }],
        },
        echo: {
          backends: [{ id: "echo", url: echo.url }],
          persistence: [{ type: "cookie", mode: "insert", name: "TETHER" }],
        },
      },
      secrets: { cookieKeys: [Buffer.alloc(32, 5).toString("base64")] },
      accessLog: true,
    } as ConfigInput);
    origin = proxy.url("secure");
  });
  afterAll(async () => {
    await proxy.stop();
    for (const s of demo) s.stop(true);
    echo.stop();
  });

  test("curl --http2 with a cookie jar: HTTP/2 every time, the counter climbs on one backend", async () => {
    const jar = join(tempDir(), "jar");
    const seen: { version: string; backend: string; visits: number }[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await run([
        "curl",
        "-sk",
        "--http2",
        "-c",
        jar,
        "-b",
        jar,
        "-w",
        "\n%{http_version}",
        `${origin}/`,
      ]);
      const lines = r.out.trim().split("\n");
      const json = lines[0] ?? "";
      const version = lines.at(-1) ?? "";
      const { backend: id, visits } = JSON.parse(json);
      seen.push({ version, backend: id, visits });
    }
    expect(seen.map((s) => s.version)).toEqual(["2", "2", "2", "2"]);
    expect(new Set(seen.map((s) => s.backend)).size).toBe(1);
    expect(seen.map((s) => s.visits)).toEqual([1, 2, 3, 4]);
  });

  test("cookie fields sent separately over HTTP/2 are read as one: tether's cookie places, the rest reaches the backend", async () => {
    const first = await h2Request(origin, { ":path": "/echo" });
    const tetherCookie = (first.headers["set-cookie"] ?? []).find((c) => c.startsWith("TETHER="));
    expect(tetherCookie).toBeDefined();
    const pair = tetherCookie?.split(";")[0] ?? "";
    // curl sends each -H cookie line as its own HTTP/2 field.
    const r = await run([
      "curl",
      "-sk",
      "--http2",
      "-i",
      "-H",
      "cookie: app_a=1",
      "-H",
      `cookie: ${pair}`,
      "-H",
      "cookie: app_b=2",
      `${origin}/echo`,
    ]);
    expect(r.out).toStartWith("HTTP/2 200");
    // tether's own cookie is removed; the application's two reach the backend joined in one line.
    expect(r.out).toContain("cookie=app_a=1; app_b=2");
    // A returning session: no new TETHER cookie is issued.
    expect(r.out).not.toContain("set-cookie: TETHER=");
  });

  test("several Set-Cookie fields reach an HTTP/2 client as separate fields", async () => {
    const r = await h2Request(origin, { ":path": "/echo" });
    expect(r.status).toBe(200);
    const cookies = r.headers["set-cookie"] ?? [];
    expect(cookies).toHaveLength(3);
    expect(cookies.filter((c) => c.startsWith("app_")).sort()).toEqual([
      "app_a=1; Path=/",
      "app_b=2; Path=/",
    ]);
    expect(cookies.filter((c) => c.startsWith("TETHER="))).toHaveLength(1);
  });

  test("node:http2 returning with its cookie stays on one backend", async () => {
    let cookie = "";
    const seen: string[] = [];
    const visits: number[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await h2Request(origin, { ":path": "/", ...(cookie ? { cookie } : {}) });
      const body = JSON.parse(r.body);
      seen.push(body.backend);
      visits.push(body.visits);
      if (!cookie) cookie = (r.headers["set-cookie"] ?? []).map((c) => c.split(";")[0]).join("; ");
    }
    expect(new Set(seen).size).toBe(1);
    expect(visits).toEqual([1, 2, 3]);
  });

  test("nghttp -v: h2 negotiated by ALPN, tether's cookie in the response, and the session kept with it", async () => {
    const first = await run(["nghttp", "-v", `${origin}/`]);
    expect(first.code).toBe(0);
    expect(first.out).toContain("The negotiated protocol: h2");
    expect(first.out).toMatch(/recv \(stream_id=\d+\) :status: 200$/m);
    const cookie =
      /recv \(stream_id=\d+\) set-cookie: (TETHER=[A-Za-z0-9_-]{87}); Path=\/; HttpOnly; SameSite=Lax; Secure$/m.exec(
        first.out,
      )?.[1];
    expect(cookie).toBeDefined();
    // The demo counts visits by its own cookie: sent back too, the count climbs only on the same backend.
    const demoCookie = /set-cookie: (demo_session=[^;]+)/.exec(first.out)?.[1];
    const home = /"backend":"(b\d)"/.exec(first.out)?.[1];
    const again = await run(["nghttp", "-v", "-H", `cookie: ${cookie}; ${demoCookie}`, `${origin}/`]);
    expect(again.out).toContain(`{"backend":"${home}","visits":2}`);
    expect(again.out).not.toContain("set-cookie: TETHER=");
  });

  test("Alt-Svc: the backend's is dropped, tether's names the bound port once, over HTTP/1.1 and HTTP/2", async () => {
    const port = proxy.port("secure");
    for (const flag of ["--http1.1", "--http2"]) {
      const r = await run(["curl", "-sk", flag, "-D", "-", "-o", "/dev/null", `${origin}/echo`]);
      const altSvc = r.out.split("\r\n").filter((l) => l.toLowerCase().startsWith("alt-svc:"));
      expect({ flag, altSvc }).toEqual({ flag, altSvc: [`alt-svc: h3=":${port}"; ma=86400`] });
    }
  });

  for (const version of ["h2", "h3"] as const) {
    test(`Chromium over ${version}: the demo's counter climbs on one backend`, async () => {
      const port = proxy.port("secure");
      const browser = await launchChromium(
        version === "h3" ? quicFlags(port, CERT) : ["--ignore-certificate-errors"],
      );
      try {
        const page = await (await browser.newContext({ ignoreHTTPSErrors: true })).newPage();
        const counts: number[] = [];
        const protocols: string[] = [];
        for (let i = 0; i < 3; i++) {
          await page.goto(`${origin}/`);
          counts.push(Number(await page.locator("#visits").textContent()));
          protocols.push(await page.evaluate(NEXT_HOP_PROTOCOL));
        }
        expect(protocols).toEqual([version, version, version]);
        expect(counts).toEqual([1, 2, 3]);
        // Bun does not say which version a request came over: the access log names the server's.
        const logged = proxy.log.lines
          .filter((l) => l.msg === "request" && l.path === "/")
          .map((l) => l.protocol);
        expect(logged).toContain(version === "h3" ? "h3" : "http/1.1+h2");
      } finally {
        await browser.close();
      }
    }, 30_000);
  }
});

describe("an https listener with h2 and h3", () => {
  let app: Server<undefined>;
  let proxy: Running;

  beforeAll(() => {
    // A page that opens a WebSocket to its own origin, and the WebSocket it talks to.
    app = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch(req, srv) {
        if (req.headers.get("upgrade") === "websocket") {
          if (srv.upgrade(req)) return;
          return new Response("upgrade failed", { status: 500 });
        }
        return new Response(
          `<!doctype html><p id="out">…</p><script>
const ws = new WebSocket("wss://" + location.host + "/ws");
ws.onopen = () => ws.send("ping");
ws.onmessage = (e) => { document.getElementById("out").textContent = e.data; };
ws.onerror = () => { document.getElementById("out").textContent = "error"; };
</script>`,
          { headers: { "content-type": "text/html" } },
        );
      },
      websocket: {
        message(ws, msg) {
          ws.send(`pong:${msg}`);
        },
      },
    }) as Server<undefined>;
    proxy = startInProcess({
      listeners: [
        {
          name: "secure",
          protocol: "https",
          address: "127.0.0.1:0",
          pool: "app",
          tls: { certificates: [{ cert: CERT, key: KEY }] },
          protocols: ["http/1.1", "h2", "h3"],
          altSvcPort: 443,
        },
      ],
      pools: { app: { backends: [{ id: "app", url: `http://127.0.0.1:${app.port}` }] } },
      accessLog: true,
    } as ConfigInput);
  });
  afterAll(async () => {
    await proxy.stop();
    app.stop(true);
  });

  test("Alt-Svc names altSvcPort, once, over HTTP/1.1 and HTTP/2", async () => {
    for (const flag of ["--http1.1", "--http2"]) {
      const r = await run(["curl", "-sk", flag, "-D", "-", "-o", "/dev/null", `${proxy.url()}/`]);
      const altSvc = r.out.split("\r\n").filter((l) => l.toLowerCase().startsWith("alt-svc:"));
      expect({ flag, altSvc }).toEqual({ flag, altSvc: ['alt-svc: h3=":443"; ma=86400'] });
    }
  });

  test("Chromium loads the page over h2 and opens a WebSocket to the same origin over HTTP/1.1", async () => {
    const browser = await launchChromium(["--ignore-certificate-errors"]);
    try {
      const page = await (await browser.newContext({ ignoreHTTPSErrors: true })).newPage();
      const wsUrls: string[] = [];
      page.on("websocket", (ws) => wsUrls.push(ws.url()));
      await page.goto(`${proxy.url()}/`);
      expect(await page.evaluate(NEXT_HOP_PROTOCOL)).toBe("h2");
      await page.waitForFunction('document.getElementById("out").textContent !== "…"', null, {
        timeout: 10_000,
      });
      expect(await page.locator("#out").textContent()).toBe("pong:ping");
      expect(wsUrls).toEqual([`wss://127.0.0.1:${proxy.port()}/ws`]);
    } finally {
      await browser.close();
    }
  }, 30_000);
});

describe("an http listener with h2c", () => {
  let demo: Server<undefined>[] = [];
  let proxy: Running;

  beforeAll(() => {
    demo = ["b1", "b2", "b3"].map((id) => startDemoBackend(id, "127.0.0.1:0"));
    proxy = startInProcess({
      listeners: [
        {
          name: "plain",
          protocol: "http",
          address: "127.0.0.1:0",
          pool: "demo",
          protocols: ["http/1.1", "h2c"],
        },
      ],
      pools: {
        demo: {
          backends: demo.map((s, i) => ({ id: `b${i + 1}`, url: `http://127.0.0.1:${s.port}` })),
          persistence: [{ type: "cookie", mode: "insert", name: "TETHER" }],
        },
      },
      secrets: { cookieKeys: [Buffer.alloc(32, 6).toString("base64")] },
    } as ConfigInput);
  });
  afterAll(async () => {
    await proxy.stop();
    for (const s of demo) s.stop(true);
  });

  test("curl --http2-prior-knowledge gets HTTP/2 and tether's cookie, and returns to one backend; HTTP/1.1 on the same listener joins the session", async () => {
    const jar = join(tempDir(), "jar");
    const curl = async (flag: string) => {
      const r = await run(["curl", "-s", flag, "-c", jar, "-b", jar, "-D", "-", `${proxy.url()}/`]);
      const [head = "", body = ""] = r.out.split("\r\n\r\n");
      const { backend: id, visits } = JSON.parse(body);
      return {
        status: head.split("\r\n")[0]?.trim(),
        cookie: /^set-cookie: (TETHER=[^;]+)/im.exec(head)?.[1],
        id,
        visits,
      };
    };
    const first = await curl("--http2-prior-knowledge");
    expect(first.status).toBe("HTTP/2 200");
    expect(first.cookie).toMatch(/^TETHER=[A-Za-z0-9_-]{87}$/);
    const again = [await curl("--http2-prior-knowledge"), await curl("--http2-prior-knowledge")];
    const plain = await curl("--http1.1");
    expect([first, ...again, plain].map((r) => `${r.status} ${r.id} ${r.visits}`)).toEqual([
      `HTTP/2 200 ${first.id} 1`,
      `HTTP/2 200 ${first.id} 2`,
      `HTTP/2 200 ${first.id} 3`,
      `HTTP/1.1 200 OK ${first.id} 4`,
    ]);
    // A returning session is not given another cookie.
    expect([...again, plain].map((r) => r.cookie)).toEqual([undefined, undefined, undefined]);
  });

  test("a plain HTTP/1.1 client without a cookie is served and given one", async () => {
    const res = await fetch(`${proxy.url()}/`);
    expect(res.status).toBe(200);
    expect(JSON.parse(await res.text())).toMatchObject({ visits: 1 });
    expect(res.headers.getSetCookie().find((c) => c.startsWith("TETHER="))).toMatch(
      /^TETHER=[A-Za-z0-9_-]{87}; Path=\/; HttpOnly; SameSite=Lax$/,
    );
  });
});
