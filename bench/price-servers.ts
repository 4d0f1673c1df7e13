/**
 * One-change servers for bench/price.ts: each adds one piece of what a proxy
 * on Bun does, so the CPU it costs per request can be read off against the
 * others and against HAProxy in the same run.
 *
 *   bun bench/price-servers.ts --variant NAME --port P --upstream U
 *
 * static       Bun.serve answering a fixed response
 * request-ip   static + server.requestIP(req) (a getpeername per request)
 * signal       static + an abort listener on req.signal
 * timeout      static + server.timeout(req, 0) and back (what a slow request needs)
 * proxy        Bun.serve → tether's upstream client → a Response with the body
 * proxy-full   proxy + what tether asks of Bun: requestIP, every request header
 *              copied, forwarding headers, the response's headers into a Headers
 * sketch       proxy-full's shape with cookie insert and nothing else: the sealed
 *              token taken out of the Cookie, opened once (a Map of opened tokens),
 *              the backend's fields back without hop-by-hop ones, Set-Cookie and
 *              Cache-Control: private for a new session, one .then on the
 *              upstream promise; what tether does beyond it (timeouts, aborts,
 *              metrics, audit, routing, accounting) is what tether ÷ sketch prices
 * listen-proxy Bun.listen front end: the head parsed into header pairs, forwarding
 *              headers added, tether's upstream client, the answer written as
 *              bytes (bodyless GETs, no pipelining: a floor, not a proxy)
 * raw          Bun.listen + Bun.connect, no Request/Response objects: the head is
 *              relayed as bytes, the answer framed by Content-Length (bodyless
 *              GETs only: a floor, not a proxy)
 */
import { newSessionKey } from "../src/persistence/cookie-insert.ts";
import { backendKey, type TokenClaims, TokenSealer } from "../src/persistence/token.ts";
import { UpstreamClient } from "../src/proxy/upstream/client.ts";
import type { UpstreamTarget } from "../src/proxy/upstream/types.ts";
import { HOST } from "./lib/net.ts";

export const VARIANTS = [
  "static",
  "request-ip",
  "signal",
  "timeout",
  "proxy",
  "proxy-full",
  "sketch",
  "listen-proxy",
  "raw",
] as const;
export type Variant = (typeof VARIANTS)[number];

const BODY = `${"hello from a one-change server".padEnd(63, ".")}\n`;
const PLAIN = { "content-type": "text/plain" };
const UPSTREAM_OPTIONS = { connectTimeoutMs: 5000, responseTimeoutMs: 30_000 };

const SKETCH_HOP = new Set(["connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"]);

/** The sketch variant (see the list above): cookie insert on the shape of proxy-full. */
function serveSketch(port: number, target: UpstreamTarget): { port: number; stop: () => void } {
  const client = new UpstreamClient();
  const sealer = new TokenSealer([Buffer.alloc(32, 9)], "app", "TETHER");
  const opened = new Map<string, TokenClaims>();
  const server = Bun.serve({
    hostname: HOST,
    port,
    idleTimeout: 120,
    fetch(req, srv) {
      const ip = srv.requestIP(req)?.address ?? "";
      const fields: string[] = [];
      let token: string | null = null;
      let host = "";
      for (const [name, value] of req.headers) {
        if (SKETCH_HOP.has(name)) continue;
        if (name === "cookie") {
          token = value.startsWith("TETHER=") ? value.slice(7) : null;
          continue;
        }
        if (name === "host") host = value;
        fields.push(name, value);
      }
      fields.push("x-forwarded-for", ip, "x-forwarded-proto", "http", "x-forwarded-host", host);
      fields.push("forwarded", `for=${ip};proto=http;host=${host}`);
      let claims = token === null ? undefined : opened.get(token);
      if (token !== null && claims === undefined) {
        const r = sealer.open(token);
        if (r.ok) {
          claims = r.claims;
          opened.set(token, claims);
        }
      }
      const fresh = claims === undefined;
      return client
        .request(
          target,
          { method: req.method, target: "/", fields, body: null, bodyLength: null },
          UPSTREAM_OPTIONS,
        )
        .then((r) => {
          const headers = new Headers();
          for (const [name, value] of r.headers) {
            const lower = name.toLowerCase();
            if (!SKETCH_HOP.has(lower) && lower !== "content-length") headers.append(name, value);
          }
          if (fresh) {
            const now = Math.floor(Date.now() / 1000);
            const sealed = sealer.seal({
              sessionKey: newSessionKey(),
              backendKey: backendKey("app-1"),
              issuedAt: now,
              lastSeen: now,
            });
            headers.append("set-cookie", `TETHER=${sealed}; Path=/; HttpOnly; SameSite=Lax`);
            headers.set("cache-control", "private");
          }
          return new Response(r.body as Uint8Array, { status: r.status, statusText: r.statusText, headers });
        });
    },
  });
  return { port: server.port ?? port, stop: () => server.stop(true) };
}

/** Starts one variant on `port` (0: any); returns its port and a stop function. */
export function serveVariant(
  variant: Variant,
  port: number,
  target: UpstreamTarget,
): { port: number; stop: () => void } {
  if (variant === "raw") return serveRaw(port, target);
  if (variant === "listen-proxy") return serveListenProxy(port, target);
  if (variant === "sketch") return serveSketch(port, target);
  const client = new UpstreamClient();
  const server = Bun.serve({
    hostname: HOST,
    port,
    idleTimeout: 120,
    async fetch(req, server) {
      switch (variant) {
        case "request-ip":
          server.requestIP(req);
          break;
        case "signal":
          req.signal.addEventListener("abort", () => {});
          break;
        case "timeout":
          server.timeout(req, 0);
          server.timeout(req, 120);
          break;
        case "proxy": {
          const fields = ["host", req.headers.get("host") ?? ""];
          const r = await client.request(
            target,
            { method: req.method, target: "/", fields, body: null, bodyLength: null },
            UPSTREAM_OPTIONS,
          );
          return new Response(r.body as Uint8Array, { headers: PLAIN });
        }
        case "proxy-full": {
          const ip = server.requestIP(req)?.address ?? "";
          const fields: string[] = [];
          for (const [name, value] of req.headers) if (name !== "connection") fields.push(name, value);
          fields.push("x-forwarded-for", ip, "x-forwarded-proto", "http", "forwarded", `for=${ip}`);
          const r = await client.request(
            target,
            { method: req.method, target: "/", fields, body: null, bodyLength: null },
            UPSTREAM_OPTIONS,
          );
          const out = new Headers();
          for (const [name, value] of r.headers) out.append(name, value);
          return new Response(r.body as Uint8Array, {
            status: r.status,
            statusText: r.statusText,
            headers: out,
          });
        }
      }
      return new Response(BODY, { headers: PLAIN });
    },
  });
  return { port: server.port ?? port, stop: () => server.stop(true) };
}

interface RawClient {
  buf: string;
}
interface RawUpstream {
  client: import("bun").Socket<RawClient> | null;
  buf: Buffer | null;
}

function serveRaw(port: number, target: UpstreamTarget): { port: number; stop: () => void } {
  const idle: import("bun").Socket<RawUpstream>[] = [];
  const upstream = () =>
    Bun.connect<RawUpstream>({
      hostname: target.hostname,
      port: target.port,
      data: { client: null, buf: null },
      socket: {
        data(up, chunk) {
          const b = up.data.buf ? Buffer.concat([up.data.buf, chunk]) : chunk;
          const end = b.indexOf("\r\n\r\n");
          const length = /content-length: *(\d+)/i.exec(b.toString("latin1", 0, Math.max(end, 0)));
          if (end < 0 || b.length < end + 4 + Number(length?.[1] ?? 0)) {
            up.data.buf = b;
            return;
          }
          const client = up.data.client;
          up.data = { client: null, buf: null };
          idle.push(up);
          client?.write(b);
        },
      },
    });
  const listener = listenForHeads(port, async (c, head) => {
    const up = idle.pop() ?? (await upstream());
    up.data.client = c;
    up.write(head);
  });
  return {
    port: listener.port,
    stop: () => {
      listener.stop(true);
      for (const up of idle) up.end();
    },
  };
}

/**
 * A Bun.listen server that buffers each connection's bytes until a request
 * head is complete and hands the head (through its blank line) to `onHead`;
 * bytes after it wait for the next head.
 */
function listenForHeads(
  port: number,
  onHead: (c: import("bun").Socket<RawClient>, head: string) => void | Promise<void>,
): import("bun").TCPSocketListener<RawClient> {
  return Bun.listen<RawClient>({
    hostname: HOST,
    port,
    data: { buf: "" },
    socket: {
      open(c) {
        c.data = { buf: "" };
      },
      data(c, chunk) {
        const text = c.data.buf + chunk.toString("latin1");
        const end = text.indexOf("\r\n\r\n");
        if (end < 0) {
          c.data.buf = text;
          return;
        }
        c.data.buf = text.slice(end + 4);
        void onHead(c, text.slice(0, end + 4));
      },
    },
  });
}

/** Bun.listen front end: head parsed into pairs, tether's upstream client, the answer written as bytes. */
function serveListenProxy(port: number, target: UpstreamTarget): { port: number; stop: () => void } {
  const client = new UpstreamClient();
  const listener = listenForHeads(port, async (c, head) => {
    const lines = head.slice(0, -4).split("\r\n");
    const [method, path] = (lines[0] ?? "").split(" ");
    const fields: string[] = [];
    const ip = c.remoteAddress;
    for (let i = 1; i < lines.length; i++) {
      const l = lines[i] as string;
      const colon = l.indexOf(":");
      const name = l.slice(0, colon);
      if (name.toLowerCase() !== "connection") fields.push(name, l.slice(colon + 1).trim());
    }
    fields.push("x-forwarded-for", ip, "x-forwarded-proto", "http", "forwarded", `for=${ip}`);
    const r = await client.request(
      target,
      { method: method ?? "GET", target: path ?? "/", fields, body: null, bodyLength: null },
      UPSTREAM_OPTIONS,
    );
    const body = r.body as Uint8Array;
    let out = `HTTP/1.1 ${r.status} ${r.statusText}\r\n`;
    for (const [name, value] of r.headers) {
      const lower = name.toLowerCase();
      if (lower !== "connection" && lower !== "keep-alive" && lower !== "content-length")
        out += `${name}: ${value}\r\n`;
    }
    out += `content-length: ${body.length}\r\n\r\n`;
    c.write(Buffer.concat([Buffer.from(out, "latin1"), body]));
  });
  return { port: listener.port, stop: () => listener.stop(true) };
}

if (import.meta.main) {
  const arg = (name: string) => process.argv[process.argv.indexOf(name) + 1] ?? "";
  const variant = arg("--variant") as Variant;
  if (!VARIANTS.includes(variant)) throw new Error(`--variant must be one of ${VARIANTS.join(", ")}`);
  const upstreamPort = Number(arg("--upstream"));
  const target = { key: `http://${HOST}:${upstreamPort}`, hostname: HOST, port: upstreamPort };
  serveVariant(variant, Number(arg("--port")), target);
}
