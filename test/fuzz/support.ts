/**
 * Fuzz support: a running tether (in this process) with one pool per
 * persistence rule under test, a raw HTTP client that can send any bytes,
 * and a watch for unhandled rejections and uncaught exceptions.
 *
 * Used by test/fuzz/*.test.ts (a few thousand cases in npm test) and by
 * scripts/fuzz-long.ts (100k+ cases each, opt-in).
 */
import type { Server } from "bun";
import { createAudit } from "../../src/audit.ts";
import { resolveConfig } from "../../src/config/load.ts";
import type { ConfigInput } from "../../src/config/schema.ts";
import { createLogger } from "../../src/log.ts";
import { startTether, type Tether } from "../../src/server/app.ts";

export const COOKIE_KEY = Buffer.alloc(32, 11).toString("base64");
export const ADMIN_TOKEN = "fuzz-admin-token";

export interface RawResponse {
  /** 0: the connection closed (or timed out) before a status line. */
  status: number;
  headers: [string, string][];
  /** Everything received, Latin-1. */
  text: string;
  timedOut: boolean;
}

/**
 * Sends `bytes` on a fresh connection (the request should say Connection:
 * close) and parses the status line and headers of the first response.
 */
export function rawHttp(port: number, bytes: Uint8Array, timeoutMs = 5000): Promise<RawResponse> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let settled = false;
    const finish = (timedOut: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      const text = Buffer.concat(chunks).toString("latin1");
      const headEnd = text.indexOf("\r\n\r\n");
      const head = headEnd === -1 ? "" : text.slice(0, headEnd);
      const [statusLine = "", ...lines] = head.split("\r\n");
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1] ?? 0);
      const headers = lines.map((l): [string, string] => {
        const colon = l.indexOf(":");
        return [l.slice(0, colon).trim().toLowerCase(), l.slice(colon + 1).trim()];
      });
      resolve({ status, headers, text, timedOut });
    };
    const timer = setTimeout(() => {
      finish(true);
      sock?.terminate();
    }, timeoutMs);
    let sock: { terminate(): void } | null = null;
    Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: {
        open(s) {
          sock = s;
          s.write(bytes);
        },
        data(_s, d) {
          chunks.push(Buffer.from(d));
        },
        close() {
          finish(false);
        },
        error() {
          finish(false);
        },
        connectError() {
          finish(false);
        },
      },
    }).catch(() => finish(false));
  });
}

export const header = (r: RawResponse, name: string): string[] =>
  r.headers.filter(([n]) => n === name).map(([, v]) => v);

/** A GET request's bytes; `extra` header lines are written as given (Latin-1 or UTF-8). */
export function getRequest(
  target: string,
  extra: [string, string][] = [],
  encoding: "latin1" | "utf8" = "latin1",
): Uint8Array {
  const lines = [`GET ${target} HTTP/1.1`, "Host: fuzz.test", ...extra.map(([n, v]) => `${n}: ${v}`)];
  return Buffer.from(`${lines.join("\r\n")}\r\nConnection: close\r\n\r\n`, encoding);
}

/** Bytes a header value may not contain (RFC 9110 5.5): CTLs other than HTAB, and DEL. */
export function hasCtl(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if ((c < 0x20 && c !== 0x09) || c === 0x7f) return true;
  }
  return false;
}

/** Counts unhandled rejections and uncaught exceptions while the fuzzers run. */
export function watchProcess(): { rejections: unknown[]; exceptions: unknown[]; stop(): void } {
  const w = {
    rejections: [] as unknown[],
    exceptions: [] as unknown[],
    stop() {
      process.off("unhandledRejection", onRejection);
      process.off("uncaughtException", onException);
    },
  };
  const onRejection = (e: unknown) => w.rejections.push(e);
  const onException = (e: unknown) => w.exceptions.push(e);
  process.on("unhandledRejection", onRejection);
  process.on("uncaughtException", onException);
  return w;
}

export interface FuzzEnv {
  tether: Tether;
  port: number;
  adminUrl: string;
  /** Audit events seen so far, by event name. */
  counts: Record<string, number>;
  /** Log lines at warn or error level (anything tether complains about). */
  problems: Record<string, unknown>[];
  /** Backend names, as they answer in X-Backend. */
  backends: string[];
  stop(): Promise<void>;
}

/**
 * tether with: "/" → pool app (cookie insert), "/url/" → pool url (?sid=,
 * ;jsessionid=), "/hdr/" → pool hdr (header X-Session-Id), "/ip/" → pool ip
 * (client-ip, this process trusted as a proxy), and pool "spare" (no
 * traffic; its backends' states are what the admin fuzzer changes).
 */
export function startFuzzEnv(): FuzzEnv {
  const names = ["f1", "f2", "f3"];
  const servers: Server<undefined>[] = names.map((name) =>
    Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: () => new Response(name, { headers: { "x-backend": name } }),
    }),
  );
  const backends = servers.map((s, i) => ({ id: names[i] as string, url: `http://127.0.0.1:${s.port}` }));
  const input = {
    listeners: [
      {
        name: "web",
        protocol: "http",
        address: "127.0.0.1:0",
        pool: "app",
        routes: [
          { pathPrefix: "/url/", pool: "url" },
          { pathPrefix: "/hdr/", pool: "hdr" },
          { pathPrefix: "/ip/", pool: "ip" },
        ],
      },
    ],
    pools: {
      app: { backends, persistence: [{ type: "cookie", mode: "insert", name: "TETHER" }] },
      url: {
        backends,
        persistence: [{ type: "url", param: "sid", pathParam: "jsessionid", maxEntries: 10_000 }],
      },
      hdr: { backends, persistence: [{ type: "header", name: "X-Session-Id" }] },
      ip: { backends, persistence: [{ type: "client-ip", ipv4Prefix: 24 }] },
      spare: {
        backends: [
          { id: "s1", url: "http://127.0.0.1:9" },
          { id: "s2", url: "http://127.0.0.1:9" },
        ],
      },
    },
    trustedProxies: ["127.0.0.1/32", "::1/128"],
    secrets: { cookieKeys: [COOKIE_KEY] },
    admin: { address: "127.0.0.1:0", token: ADMIN_TOKEN },
  } as ConfigInput;
  const counts: Record<string, number> = {};
  const problems: Record<string, unknown>[] = [];
  const log = createLogger((line) => {
    const l = JSON.parse(line) as Record<string, unknown>;
    if (l.level === "warn" || l.level === "error") problems.push(l);
  }, "warn");
  const tether = startTether(resolveConfig(input, { baseDir: "/", env: {} }), log, {
    audit: createAudit(undefined, (l) => {
      const event = String((JSON.parse(l) as { event: string }).event);
      counts[event] = (counts[event] ?? 0) + 1;
    }),
  });
  const port = [...tether.listeners.values()][0]?.server.port ?? 0;
  return {
    tether,
    port,
    adminUrl: `http://127.0.0.1:${tether.admin?.port}`,
    counts,
    problems,
    backends: names,
    async stop() {
      await tether.stop(100);
      for (const s of servers) s.stop(true);
    },
  };
}
