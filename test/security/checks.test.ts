/**
 * Security checks: tampered session cookies are never honoured, secrets never
 * reach logs, audit lines, files or error bodies, the admin API answers
 * nothing without its token, and no response tether makes names a backend
 * address. (TLS versions and suites: test/e2e/tls.test.ts.) See docs/security.md.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createAudit } from "../../src/audit.ts";
import type { ConfigInput, PersistenceRuleConfig } from "../../src/config/schema.ts";
import { type Member, PersistenceChain } from "../../src/persistence/chain.ts";
import { backendKey, TokenSealer } from "../../src/persistence/token.ts";
import type { RejectReason, RequestFacts } from "../../src/persistence/types.ts";
import { startTether, type Tether } from "../../src/server/app.ts";
import { backend, closedPort, type TestBackend } from "../support/backends.ts";
import { memoryLogger, config as resolve, spawnCli, tempDir, writeConfig } from "../support/tether.ts";
import { rawExchange } from "./support.ts";

const INSERT: PersistenceRuleConfig = {
  type: "cookie",
  mode: "insert",
  name: "TETHER",
  sameSite: "Lax",
  path: "/",
  partitioned: false,
  refreshAfterMs: 60_000,
  rebalance: "persistent",
};
const IDS = ["b1", "b2", "b3", "b4"];
const NOW = 1_800_000_000;

/** A small seeded generator, so a failure names a reproducible case. */
function rng(seed: number) {
  let s = seed >>> 0 || 1;
  const next = () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
  return {
    next,
    int: (n: number) => Math.floor(next() * n),
    pick: <T>(xs: ArrayLike<T>) => xs[Math.floor(next() * xs.length)] as T,
  };
}

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

interface Tampered {
  kind: string;
  /** The Cookie header value to send. */
  cookie: string;
  /** The session key of the valid token it was made from (a fresh session must not reuse it). */
  originalSession: string;
  reasons: RejectReason[];
}

/**
 * Valid tokens for backend b1 under KEY, then altered: characters replaced,
 * bits flipped, truncated, extended, spliced, sealed for another pool or
 * cookie name or under a key tether does not have, random, or with
 * characters outside base64url.
 */
function tamperedCookies(key: Buffer, count: number, seed: number): Tampered[] {
  const r = rng(seed);
  const own = new TokenSealer([key], "app", "TETHER");
  const otherPool = new TokenSealer([key], "shop", "TETHER");
  const otherName = new TokenSealer([key], "app", "OTHER");
  const otherKey = new TokenSealer([randomBytes(32)], "app", "TETHER");
  const claims = () => ({
    sessionKey: new Uint8Array(randomBytes(16)),
    backendKey: backendKey("b1"),
    issuedAt: NOW - 30,
    lastSeen: NOW - 30,
  });
  const hex = (k: Uint8Array) => Buffer.from(k).toString("hex");
  const kinds: [string, number, () => Omit<Tampered, "kind">][] = [
    [
      "character replaced",
      0.25,
      () => {
        const c = claims();
        const t = own.seal(c);
        for (;;) {
          const i = r.int(t.length);
          const ch = r.pick(ALPHABET);
          const out = t.slice(0, i) + ch + t.slice(i + 1);
          // The last character carries 2 spare bits: some replacements decode to the same bytes (see below).
          if (Buffer.from(out, "base64url").equals(Buffer.from(t, "base64url"))) continue;
          return {
            cookie: `TETHER=${out}`,
            originalSession: hex(c.sessionKey),
            reasons: ["malformed", "bad-mac", "unknown-key"],
          };
        }
      },
    ],
    [
      "bit flipped",
      0.25,
      () => {
        const c = claims();
        const b = Buffer.from(own.seal(c), "base64url");
        const i = r.int(b.length);
        b[i] = (b[i] as number) ^ (1 << r.int(8));
        return {
          cookie: `TETHER=${b.toString("base64url")}`,
          originalSession: hex(c.sessionKey),
          reasons: i === 0 ? ["malformed"] : i < 5 ? ["unknown-key"] : ["bad-mac"],
        };
      },
    ],
    [
      "truncated",
      0.1,
      () => {
        const c = claims();
        const t = own.seal(c);
        const n = 1 + r.int(t.length - 1);
        const out = r.next() < 0.5 ? t.slice(0, t.length - n) : t.slice(n);
        return { cookie: `TETHER=${out}`, originalSession: hex(c.sessionKey), reasons: ["malformed"] };
      },
    ],
    [
      "extended",
      0.05,
      () => {
        const c = claims();
        const extra = Array.from({ length: 1 + r.int(8) }, () => r.pick(ALPHABET)).join("");
        return {
          cookie: `TETHER=${own.seal(c)}${extra}`,
          originalSession: hex(c.sessionKey),
          reasons: ["malformed"],
        };
      },
    ],
    [
      "sealed for another pool",
      0.05,
      () => {
        const c = claims();
        return {
          cookie: `TETHER=${otherPool.seal(c)}`,
          originalSession: hex(c.sessionKey),
          reasons: ["bad-mac"],
        };
      },
    ],
    [
      "sealed for another cookie name",
      0.05,
      () => {
        const c = claims();
        return {
          cookie: `TETHER=${otherName.seal(c)}`,
          originalSession: hex(c.sessionKey),
          reasons: ["bad-mac"],
        };
      },
    ],
    [
      "under an unknown key",
      0.05,
      () => {
        const c = claims();
        return {
          cookie: `TETHER=${otherKey.seal(c)}`,
          originalSession: hex(c.sessionKey),
          reasons: ["unknown-key"],
        };
      },
    ],
    [
      "spliced from two tokens",
      0.05,
      () => {
        for (;;) {
          const c = claims();
          const a = Buffer.from(own.seal(c), "base64url");
          const b = Buffer.from(own.seal(claims()), "base64url");
          const cut = 6 + r.int(a.length - 7);
          const out = Buffer.concat([a.subarray(0, cut), b.subarray(cut)]);
          // Tokens that agree up to the cut splice into one of themselves, a valid token, not a forgery.
          if (out.equals(a) || out.equals(b)) continue;
          return {
            cookie: `TETHER=${out.toString("base64url")}`,
            originalSession: hex(c.sessionKey),
            reasons: ["bad-mac"],
          };
        }
      },
    ],
    [
      "random characters",
      0.1,
      () => {
        const out = Array.from({ length: 87 }, () => r.pick(ALPHABET)).join("");
        return {
          cookie: `TETHER=${out}`,
          originalSession: "",
          reasons: ["malformed", "unknown-key", "bad-mac"],
        };
      },
    ],
    [
      "characters outside base64url",
      0.05,
      () => {
        const c = claims();
        const t = own.seal(c);
        const i = r.int(t.length);
        const out = t.slice(0, i) + r.pick(["+", "/", "=", "%", "\u00e9", '"', ".", "~"]) + t.slice(i + 1);
        return { cookie: `TETHER=${out}`, originalSession: hex(c.sessionKey), reasons: ["malformed"] };
      },
    ],
  ];
  const out: Tampered[] = [];
  for (const [kind, share, make] of kinds) {
    const n = Math.round(count * share);
    for (let i = 0; i < n; i++) out.push({ kind, ...make() });
  }
  return out;
}

const facts = (cookie: string): RequestFacts => ({
  cookie,
  target: "/",
  clientIp: "203.0.113.9",
  headers: new Headers(),
  nowSec: NOW,
});
const noResponse = { setCookies: [], location: null, cacheControl: null, secure: false };
const tokenOf = (setCookie: string) => /^TETHER=([^;]*)/.exec(setCookie)?.[1] ?? null;

describe("tampered session cookies", () => {
  const KEY = randomBytes(32);
  const sealer = new TokenSealer([KEY], "app", "TETHER");
  const members = (): Member[] => IDS.map((id) => ({ id, weight: 1, state: "ready" as const, inflight: 0 }));

  test("10,000 tampered cookies are each rejected and placed as a new session with a fresh cookie", () => {
    const chain = new PersistenceChain(members(), {
      pool: "app",
      rules: [INSERT],
      keys: [KEY],
      hashBalanceFactor: 1.25,
    });
    // The untampered token is honoured: the tampering is what makes the difference.
    const c = {
      sessionKey: new Uint8Array(16).fill(1),
      backendKey: backendKey("b1"),
      issuedAt: NOW,
      lastSeen: NOW,
    };
    expect(chain.place(facts(`TETHER=${sealer.seal(c)}`))?.placement).toMatchObject({
      backendId: "b1",
      rule: "cookie-insert",
      outcome: "hit",
    });

    const cases = tamperedCookies(KEY, 10_000, 0x7e7e);
    expect(cases.length).toBe(10_000);
    const failures: string[] = [];
    const reasons = new Map<string, number>();
    let onB1 = 0;
    for (const [i, t] of cases.entries()) {
      const f = facts(t.cookie);
      const placed = chain.place(f);
      const p = placed?.placement;
      const rej = placed?.rejections ?? [];
      if (p?.rule !== "new" || p.outcome !== "new") {
        failures.push(`#${i} ${t.kind}: placed by ${p?.rule}/${p?.outcome} on ${p?.backendId}`);
        continue;
      }
      if (rej.length !== 1 || rej[0]?.rule !== "cookie-insert" || !t.reasons.includes(rej[0].reason)) {
        failures.push(`#${i} ${t.kind}: rejections ${JSON.stringify(rej)}, expected one of ${t.reasons}`);
        continue;
      }
      reasons.set(rej[0].reason, (reasons.get(rej[0].reason) ?? 0) + 1);
      if (p.backendId === "b1") onB1++;
      // A fresh cookie: it opens, names the backend the ring chose, and carries a new session key.
      const sc = chain.remember(f, p, noResponse).find((e) => e.kind === "set-cookie");
      const fresh = sc?.kind === "set-cookie" ? tokenOf(sc.header) : null;
      const opened = fresh ? sealer.open(fresh) : null;
      if (!opened?.ok || opened.claims.backendKey !== backendKey(p.backendId)) {
        failures.push(`#${i} ${t.kind}: no valid fresh cookie`);
        continue;
      }
      if (Buffer.from(opened.claims.sessionKey).toString("hex") === t.originalSession)
        failures.push(`#${i} ${t.kind}: the fresh cookie reuses the tampered session key`);
    }
    expect(failures.slice(0, 20)).toEqual([]);
    // New sessions spread over the ring: b1 (the backend the originals named) gets about a quarter, by chance.
    expect(onB1).toBeGreaterThan(2000);
    expect(onB1).toBeLessThan(3000);
    expect([...reasons.keys()].sort()).toEqual(["bad-mac", "malformed", "unknown-key"]);
  });

  test("the 2 spare bits of the last character decode to the same token: the same session, not a forgery", () => {
    const chain = new PersistenceChain(members(), {
      pool: "app",
      rules: [INSERT],
      keys: [KEY],
      hashBalanceFactor: 1.25,
    });
    const t = sealer.seal({
      sessionKey: new Uint8Array(16).fill(2),
      backendKey: backendKey("b3"),
      issuedAt: NOW,
      lastSeen: NOW,
    });
    const same = [...ALPHABET]
      .map((ch) => t.slice(0, -1) + ch)
      .filter((v) => v !== t && Buffer.from(v, "base64url").equals(Buffer.from(t, "base64url")));
    expect(same.length).toBe(3);
    for (const v of same) expect(chain.place(facts(`TETHER=${v}`))?.placement.backendId).toBe("b3");
  });

  test("a tampered cookie beside a valid one: only the first TETHER cookie counts", () => {
    const chain = new PersistenceChain(members(), {
      pool: "app",
      rules: [INSERT],
      keys: [KEY],
      hashBalanceFactor: 1.25,
    });
    const valid = sealer.seal({
      sessionKey: new Uint8Array(16).fill(3),
      backendKey: backendKey("b2"),
      issuedAt: NOW,
      lastSeen: NOW,
    });
    const [bad] = tamperedCookies(KEY, 10, 5);
    const badValue = (bad as Tampered).cookie.slice("TETHER=".length);
    expect(chain.place(facts(`TETHER=${badValue}; TETHER=${valid}`))?.placement.rule).toBe("new");
    expect(chain.place(facts(`TETHER=${valid}; TETHER=${badValue}`))?.placement.backendId).toBe("b2");
  });

  test("end to end: 300 tampered cookies are audited as rejected, re-placed, and get a fresh Set-Cookie", async () => {
    const key = randomBytes(32);
    const backends = IDS.map((id) => backend(id));
    const audit: Record<string, unknown>[] = [];
    const input = {
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: {
        app: {
          backends: backends.map((b, i) => ({ id: IDS[i], url: b.url })),
          persistence: [{ type: "cookie", mode: "insert", name: "TETHER" }],
        },
      },
      secrets: { cookieKeys: [key.toString("base64")] },
    } as ConfigInput;
    const tether = startTether(resolve(input), memoryLogger(), {
      audit: createAudit(undefined, (l) => audit.push(JSON.parse(l))),
    });
    const url = `http://127.0.0.1:${[...tether.listeners.values()][0]?.server.port}/`;
    const open = new TokenSealer([key], "app", "TETHER");
    try {
      const cases = tamperedCookies(key, 300, 0xbeef);
      const failures: string[] = [];
      // One at a time, so each request's audit lines can be told apart.
      for (const [i, t] of cases.entries()) {
        const before = audit.length;
        const res = await fetch(url, { headers: { cookie: t.cookie } });
        const answered = res.headers.get("x-backend") ?? "";
        await res.text();
        const fresh = tokenOf(res.headers.get("set-cookie") ?? "");
        const opened = fresh ? open.open(fresh) : null;
        const events = audit.slice(before).map((a) => `${a.event}:${a.reason ?? a.backend}`);
        const want = (r: string) => [`persistence.rejected:${r}`, `session.created:${answered}`];
        if (res.status !== 200 || !fresh || fresh === t.cookie.slice(7) || !opened?.ok)
          failures.push(`#${i} ${t.kind}: ${res.status}, set-cookie ${fresh}`);
        else if (opened.claims.backendKey !== backendKey(answered))
          failures.push(`#${i} ${t.kind}: the fresh cookie does not name the backend that answered`);
        else if (!t.reasons.some((r) => JSON.stringify(events) === JSON.stringify(want(r))))
          failures.push(`#${i} ${t.kind}: audit ${JSON.stringify(events)}`);
      }
      expect(failures).toEqual([]);
      expect(audit.filter((a) => a.event === "persistence.rejected").length).toBe(cases.length);
      expect(audit.filter((a) => a.event === "session.created").length).toBe(cases.length);
      // The audit names reasons, never a cookie value.
      const text = JSON.stringify(audit);
      for (const t of cases.slice(0, 50))
        if (t.cookie.length > 20) expect(text).not.toContain(t.cookie.slice(7, 40));
    } finally {
      await tether.stop(100);
      for (const b of backends) b.stop();
    }
  });
});

describe("secrets never leave tether", () => {
  const KEY = randomBytes(32);
  const TOKEN = `adm-${randomBytes(18).toString("base64url")}`;
  const APP_SECRET = `appsid${randomBytes(12).toString("hex")}`;
  const QUERY_SECRET = `qsid${randomBytes(12).toString("hex")}`;
  let app: TestBackend;
  let dir: string;
  let seen: { stdout: string; stderr: string; audit: string; snapshot: string; bodies: string[] };
  const tokensIssued: string[] = [];
  const tampered: string[] = [];

  beforeAll(async () => {
    app = backend("app", (req) => {
      const headers = new Headers({ "x-backend": "app" });
      if (!(req.headers.get("cookie") ?? "").includes("SID="))
        headers.append("set-cookie", `SID=${APP_SECRET}; Path=/`);
      return new Response("app", { headers });
    });
    dir = tempDir("tether-secrets-");
    const cfg = {
      listeners: [
        {
          name: "web",
          protocol: "http",
          address: "127.0.0.1:0",
          pool: "app",
          routes: [{ pathPrefix: "/down/", pool: "down" }],
          maxBodyBytes: 1000,
        },
      ],
      pools: {
        app: {
          backends: [{ id: "app-1", url: app.url }],
          persistence: [
            { type: "cookie", mode: "insert", name: "TETHER" },
            { type: "cookie", mode: "learn", name: "SID" },
            { type: "url", param: "sid" },
          ],
        },
        down: { backends: [{ id: "gone", url: `http://127.0.0.1:${closedPort()}` }], retries: 0 },
      },
      admin: { address: "127.0.0.1:0", token: "env:T_ADMIN_TOKEN" },
      secrets: { cookieKeys: ["env:T_COOKIE_KEY"] },
      accessLog: true,
      audit: "audit.log",
      snapshot: { file: "state.msgpack", intervalMs: 1000 },
    };
    const file = writeConfig(dir, cfg);
    const child = spawnCli(["--config", file], {
      T_ADMIN_TOKEN: TOKEN,
      T_COOKIE_KEY: KEY.toString("base64"),
    });
    const bodies: string[] = [];
    const keep = async (res: Response) => {
      bodies.push(`${res.status} ${JSON.stringify([...res.headers])} ${await res.text()}`);
      return res;
    };
    try {
      const port = await child.listening("web");
      const adminPort = await child.listening("admin");
      const web = `http://127.0.0.1:${port}`;
      const admin = `http://127.0.0.1:${adminPort}`;
      // Sessions: a new one, then returning with its cookies, by URL session ID, and with tampered cookies.
      const first = await fetch(`${web}/`);
      await first.text();
      const cookies = first.headers.getSetCookie().map((c) => c.split(";")[0] as string);
      for (const c of cookies) if (c.startsWith("TETHER=")) tokensIssued.push(c.slice(7));
      for (let i = 0; i < 3; i++) {
        const res = await fetch(`${web}/cart?item=${i}`, { headers: { cookie: cookies.join("; ") } });
        await res.text();
      }
      for (let i = 0; i < 3; i++) await (await fetch(`${web}/page?sid=${QUERY_SECRET}&n=${i}`)).text();
      for (const t of tamperedCookies(KEY, 10, 9)) {
        tampered.push(t.cookie.slice(7));
        const res = await fetch(`${web}/`, { headers: { cookie: `${t.cookie}; SID=${APP_SECRET}` } });
        await res.text();
        const issued = tokenOf(res.headers.get("set-cookie") ?? "");
        if (issued) tokensIssued.push(issued);
      }
      // Errors: an unreachable backend, a body too large, malformed requests.
      await keep(
        await fetch(`${web}/down/x?sid=${QUERY_SECRET}`, { headers: { cookie: cookies.join("; ") } }),
      );
      await keep(
        await fetch(`${web}/`, {
          method: "POST",
          body: "x".repeat(5000),
          headers: { cookie: cookies.join("; ") },
        }),
      );
      const port_ = port;
      bodies.push(
        (
          await rawExchange(
            port_,
            `GET /?sid=${QUERY_SECRET} HTTP/1.1\r\nHost: a b\r\nCookie: ${cookies.join("; ")}\r\n\r\n`,
          )
        ).text,
      );
      bodies.push(
        (await rawExchange(port_, `GET /?sid=${QUERY_SECRET} HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n`)).text,
      );
      // The admin API with wrong tokens (one a prefix of the real one), then the right one.
      for (const auth of [
        `Bearer ${TOKEN.slice(0, -1)}`,
        `Bearer ${TOKEN}x`,
        "Bearer",
        `Basic ${btoa(`admin:${TOKEN}`)}`,
        "",
      ]) {
        for (const path of ["/api/backends", "/metrics", "/api/sessions?pool=app"])
          await keep(await fetch(`${admin}${path}`, { headers: auth ? { authorization: auth } : {} }));
      }
      const bearer = { authorization: `Bearer ${TOKEN}` };
      for (const path of ["/api/backends", "/api/pools", "/api/sessions?pool=app", "/metrics"])
        await keep(await fetch(`${admin}${path}`, { headers: bearer }));
      await keep(
        await fetch(`${admin}/api/backends/app/app-1`, {
          method: "PUT",
          headers: bearer,
          body: `{"state":"${TOKEN}"}`,
        }),
      );
      await keep(
        await fetch(`${admin}/api/backends/app/app-1`, { method: "PUT", headers: bearer, body: "not json" }),
      );
      // Reloads with bad configs that hold the secrets in clear: a JSON syntax error on their line,
      // secrets where the schema wants something else, and keys that are not 32 bytes.
      const raw = KEY.toString("hex");
      const rejected = () => child.lines.filter((l) => String(l.msg).startsWith("reload rejected")).length;
      const badConfigs = [
        `{"admin": {"token": "${TOKEN}"} "secrets": {"cookieKeys": ["${raw}"]}}`,
        JSON.stringify({
          ...cfg,
          shutdownGraceMs: TOKEN,
          accessLog: raw,
          admin: { address: TOKEN, token: TOKEN },
        }),
        JSON.stringify({
          ...cfg,
          admin: { address: "127.0.0.1:0", token: TOKEN },
          secrets: { cookieKeys: [raw, KEY.toString("base64").slice(2), `${KEY.toString("base64")}AAAA`] },
        }),
      ];
      for (const text of badConfigs) {
        const before = rejected();
        writeFileSync(file, text);
        child.proc.kill("SIGHUP");
        await child.waitFor(() => rejected() > before);
      }
      // Still serving the old config.
      expect((await fetch(`${web}/`)).status).toBe(200);
    } finally {
      await child.stop();
    }
    const read = (name: string) =>
      existsSync(join(dir, name)) ? readFileSync(join(dir, name)).toString("latin1") : "";
    seen = {
      stdout: child.lines.map((l) => JSON.stringify(l)).join("\n"),
      stderr: child.stderr(),
      audit: read("audit.log"),
      snapshot: read("state.msgpack"),
      bodies,
    };
  }, 20_000);

  afterAll(() => app.stop());

  test("the run produced what is searched: log lines, audit lines, a snapshot, rejected reloads", () => {
    expect(seen.stdout).toContain('"msg":"request"');
    expect(seen.stdout.split("reload rejected").length - 1).toBe(3);
    expect(seen.audit).toContain("persistence.rejected");
    expect(seen.snapshot.length).toBeGreaterThan(0);
    expect(tokensIssued.length).toBeGreaterThanOrEqual(6);
    expect(seen.bodies.some((b) => b.startsWith("401"))).toBe(true);
    expect(seen.bodies.some((b) => b.startsWith("502"))).toBe(true);
  });

  test("no key (base64, base64url, hex), admin token, cookie value or URL session ID in any of it", () => {
    const secrets: Record<string, string> = {
      "cookie key (base64)": KEY.toString("base64"),
      "cookie key (base64url)": KEY.toString("base64url"),
      "cookie key (hex)": KEY.toString("hex"),
      "cookie key (hex, upper case)": KEY.toString("hex").toUpperCase(),
      "cookie key (base64, first 16 chars)": KEY.toString("base64").slice(0, 16),
      "admin token": TOKEN,
      "admin token (without its prefix)": TOKEN.slice(4),
      "application session cookie": APP_SECRET,
      "URL session ID": QUERY_SECRET,
    };
    for (const [i, t] of tokensIssued.entries()) secrets[`issued TETHER cookie #${i}`] = t;
    for (const [i, t] of tampered.entries())
      if (t.length >= 16) secrets[`tampered TETHER cookie #${i}`] = t.slice(0, 40);
    const where: Record<string, string> = {
      stdout: seen.stdout,
      stderr: seen.stderr,
      "audit file": seen.audit,
      "snapshot file": seen.snapshot,
      "error and admin bodies": seen.bodies.join("\n"),
    };
    const leaks: string[] = [];
    for (const [what, value] of Object.entries(secrets))
      for (const [place, text] of Object.entries(where))
        if (text.includes(value)) leaks.push(`${what} in ${place}`);
    expect(leaks).toEqual([]);
  });
});

describe("the admin API without its token", () => {
  let tether: Tether;
  let backends: TestBackend[];
  let admin = "";
  const TOKEN = `tok-${randomBytes(16).toString("hex")}`;

  beforeAll(() => {
    backends = [backend("a"), backend("b")];
    tether = startTether(
      resolve({
        listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
        pools: { app: { backends: backends.map((b, i) => ({ id: `b${i + 1}`, url: b.url })) } },
        admin: { address: "127.0.0.1:0", token: TOKEN },
      } as ConfigInput),
      memoryLogger(),
    );
    admin = `http://127.0.0.1:${tether.admin?.port}`;
  });
  afterAll(async () => {
    await tether.stop(100);
    for (const b of backends) b.stop();
  });

  test("every route, method and wrong credential gets 401 (or 404/405 with no data)", async () => {
    const paths = [
      "/api/pools",
      "/api/backends",
      "/api/sessions?pool=app",
      "/api/sessions",
      "/api/backends/app/b1",
      "/api/backends/app/nope",
      "/api/nothing-here",
      "/api/",
      "/metrics",
      "/metrics?name=x",
      "/api/../metrics",
      "/%61pi/backends",
      "/api%2Fbackends",
      "//api/backends",
      "/API/backends",
      "/metrics/",
    ];
    const methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
    const creds: Record<string, string>[] = [
      {},
      { authorization: "" },
      { authorization: "Bearer" },
      { authorization: "Bearer " },
      { authorization: `Bearer ${TOKEN.slice(0, -1)}` },
      { authorization: `Bearer ${TOKEN}0` },
      { authorization: `Bearer  ${TOKEN}` },
      { authorization: `bearer${TOKEN}` },
      { authorization: `Basic ${btoa(`admin:${TOKEN}`)}` },
      { authorization: TOKEN },
      { cookie: `token=${TOKEN}` },
      { "x-admin-token": TOKEN },
    ];
    const secretsInBodies = [backends[0]?.url, backends[1]?.url, '"b1"', '"pools"', "tether_"];
    const bad: string[] = [];
    const jobs: Promise<void>[] = [];
    for (const path of paths)
      for (const method of methods)
        for (const headers of creds) {
          jobs.push(
            (async () => {
              const body =
                method === "PUT" || method === "POST" || method === "PATCH" ? '{"state":"maint"}' : undefined;
              const res = await fetch(`${admin}${path}${path.includes("?") ? "&" : "?"}token=${TOKEN}`, {
                method,
                headers,
                body,
              });
              const text = await res.text();
              if (![401, 404, 405].includes(res.status))
                bad.push(`${method} ${path} ${JSON.stringify(headers)}: ${res.status}`);
              for (const s of secretsInBodies)
                if (s && text.includes(s)) bad.push(`${method} ${path}: body shows ${s}`);
            })(),
          );
        }
    await Promise.all(jobs);
    expect(bad).toEqual([]);
    // Nothing changed state.
    expect(tether.runtime.pools.get("app")?.backends.map((b) => b.state)).toEqual(["ready", "ready"]);
    // Every /api/ and /metrics path is checked for the token before anything else.
    for (const path of ["/api/pools", "/api/nothing-here", "/metrics", "/api/backends/app/b1"])
      expect((await fetch(`${admin}${path}`, { method: "DELETE" })).status).toBe(401);
  });

  test("only /healthz and the dashboard page answer without a token, and they hold no data", async () => {
    expect(await (await fetch(`${admin}/healthz`)).text()).toBe("ok\n");
    const page = await fetch(`${admin}/`);
    expect(page.status).toBe(200);
    const html = await page.text();
    for (const b of backends) expect(html).not.toContain(b.url.slice("http://".length));
    expect(html).not.toContain(TOKEN);
  });
});

describe("no response made by tether names a backend address", () => {
  let tether: Tether;
  let live: TestBackend[];
  let downPort = 0;
  let web = "";
  let port = 0;
  const addresses: string[] = [];

  beforeAll(() => {
    downPort = closedPort();
    live = [
      backend("ok"),
      backend("slow", async () => {
        await Bun.sleep(1500);
        return new Response("late");
      }),
      backend(
        "redirect",
        (_req, server) =>
          new Response(null, {
            status: 302,
            headers: { location: `http://127.0.0.1:${server.port}/elsewhere` },
          }),
      ),
    ];
    const [ok, slow, redirect] = live as [TestBackend, TestBackend, TestBackend];
    tether = startTether(
      resolve({
        listeners: [
          {
            name: "web",
            protocol: "http",
            address: "127.0.0.1:0",
            pool: "ok",
            maxBodyBytes: 100,
            routes: [
              { pathPrefix: "/down", pool: "down" },
              { pathPrefix: "/maint", pool: "maint" },
              { pathPrefix: "/slow", pool: "slow" },
              { pathPrefix: "/redirect", pool: "redirect" },
            ],
          },
        ],
        pools: {
          ok: { backends: [{ id: "ok", url: ok.url }], persistence: [{ type: "cookie", mode: "insert" }] },
          down: { backends: [{ id: "down", url: `http://127.0.0.1:${downPort}` }], retries: 0 },
          maint: { backends: [{ id: "m", url: ok.url, state: "maint" }] },
          slow: { backends: [{ id: "slow", url: slow.url }], responseTimeoutMs: 200 },
          redirect: { backends: [{ id: "r", url: redirect.url }] },
        },
      } as ConfigInput),
      memoryLogger(),
    );
    port = [...tether.listeners.values()][0]?.server.port ?? 0;
    web = `http://127.0.0.1:${port}`;
    for (const p of [downPort, ...live.map((b) => Number(b.server.port))])
      addresses.push(`127.0.0.1:${p}`, `:${p}`, String(p));
  });
  afterAll(async () => {
    await tether.stop(100);
    for (const b of live) b.stop();
  });

  test("502, 503, 504, 413 and the WebSocket 502: status and text only", async () => {
    const seen: Record<string, string> = {};
    const grab = async (name: string, res: Response, status: number) => {
      expect(res.status).toBe(status);
      seen[name] = `${JSON.stringify([...res.headers])}\n${await res.text()}`;
    };
    await grab("502", await fetch(`${web}/down`), 502);
    await grab("503", await fetch(`${web}/maint`), 503);
    await grab("504", await fetch(`${web}/slow`), 504);
    await grab("413", await fetch(`${web}/`, { method: "POST", body: "x".repeat(1000) }), 413);
    await grab("200", await fetch(`${web}/`), 200);
    const ws = await rawExchange(
      port,
      "GET /down HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    expect(ws.statuses).toEqual([502]);
    seen["websocket 502"] = ws.text;
    for (const [bytes, status] of [
      ["GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400],
      ["CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n", 501],
      [`GET / HTTP/1.1\r\nHost: x\r\nX: ${"a".repeat(20_000)}\r\n\r\n`, 431],
      ["GET / HTTP/1.1\r\nHost: x\r\nX: a\x00\r\n\r\n", 400],
    ] as const) {
      const r = await rawExchange(port, bytes);
      expect(r.statuses).toEqual([status]);
      seen[String(status)] = r.text;
    }
    for (const [name, text] of Object.entries(seen))
      for (const a of addresses)
        if (text.includes(a)) throw new Error(`${name} response shows ${a}:\n${text}`);
  });

  test("a backend's own Location header passes through as the backend sent it", async () => {
    const [, , redirect] = live as [TestBackend, TestBackend, TestBackend];
    const res = await fetch(`${web}/redirect`, { redirect: "manual" });
    expect(res.status).toBe(302);
    // The backend wrote its own address into Location: that is the backend's choice, not tether's.
    expect(res.headers.get("location")).toBe(`${redirect.url}/elsewhere`);
  });
});
