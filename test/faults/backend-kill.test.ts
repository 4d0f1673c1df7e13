/**
 * A backend killed (SIGKILL) while 30 cookie-jar clients keep sending: no
 * request fails (connect failures and resets before the response are retried
 * for these bodiless GETs), the dead backend's sessions move exactly once
 * (audited as session.repinned), every other session stays, and when the
 * backend comes back on the same port nothing moves back.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { ConfigInput } from "../../src/config/schema.ts";
import {
  backendRuns,
  describe as describeSamples,
  type InProcess,
  KEY,
  type ProcBackend,
  procBackend,
  runClients,
  startWithAudit,
} from "./support.ts";

let backends: ProcBackend[] = [];
let t: InProcess;

beforeAll(async () => {
  backends = await Promise.all(["b1", "b2", "b3"].map((n) => procBackend(n)));
  t = startWithAudit({
    listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
    pools: {
      app: {
        backends: backends.map((b) => ({ id: b.name, url: b.url })),
        persistence: [{ type: "cookie", mode: "insert", name: "TETHER" }],
        connectTimeoutMs: 1000,
        // Passive marks expire quickly, so the revived backend counts as up again before the run ends.
        failTimeoutMs: 500,
      },
    },
    secrets: { cookieKeys: [KEY] },
  } as ConfigInput);
});

afterAll(async () => {
  await t?.stop();
  await Promise.all(backends.map((b) => b.stop()));
});

test("killing a backend under load fails no request and moves only its sessions, once", async () => {
  const victim = backends[1] as ProcBackend;
  const run = runClients({
    url: t.url(),
    clients: 30,
    durationMs: 3000,
    // A few milliseconds of work per request, so some are in flight when the backend dies.
    path: (c, n) => `/c${c}/r${n}?delay=${(c + n) % 5}`,
  });
  await Bun.sleep(1000);
  const killedAt = performance.now();
  await victim.kill();
  await Bun.sleep(1000);
  await victim.restart();
  const samples = await run;

  // Every request was answered, by a live backend.
  const failed = samples.filter((s) => s.status !== 200 || s.error !== null);
  expect(failed, describeSamples(failed)).toEqual([]);
  expect(samples.length).toBeGreaterThan(300);
  // Nothing went to the victim after it died, nor after it came back up (sessions do not flap back).
  expect(samples.some((s) => s.backend === victim.name && s.start > killedAt + 50)).toBe(false);

  // The victim's clients moved once, to another backend; everyone else stayed.
  const runs = backendRuns(samples);
  expect(runs.size).toBe(30);
  const affected = [...runs.values()].filter((r) => r[0] === victim.name);
  expect(affected.length).toBeGreaterThan(0);
  for (const r of runs.values()) {
    if (r[0] === victim.name) {
      expect(r.length).toBe(2);
      expect(r[1]).not.toBe(victim.name);
    } else {
      expect(r.length).toBe(1);
    }
  }

  // Audited: one session.repinned per moved session, all away from the victim.
  const repinned = t.audit.filter((e) => e.event === "session.repinned");
  expect(repinned.length).toBe(affected.length);
  for (const e of repinned) {
    expect(e.from).toBe(victim.name);
    expect(e.to).not.toBe(victim.name);
  }
  // Each moved client's new backend is the one the audit named for a move.
  const targets = new Set(repinned.map((e) => e.to));
  for (const r of affected) expect(targets.has(r[1] as string)).toBe(true);
});

test("a request with a body whose backend refuses connections goes to the next backend", async () => {
  // Passive health off: every request meets the refused connect itself.
  const dead = await procBackend("dead");
  await dead.kill();
  const alive = await procBackend("alive");
  const p = startWithAudit({
    listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
    pools: {
      app: {
        backends: [
          { id: "dead", url: dead.url },
          { id: "alive", url: alive.url },
        ],
        persistence: [{ type: "cookie", mode: "insert", name: "TETHER" }],
        maxFails: 0,
      },
    },
    secrets: { cookieKeys: [KEY] },
  } as ConfigInput);
  try {
    const answers = await Promise.all(
      Array.from({ length: 20 }, async (_, i) => {
        const res = await fetch(`${p.url()}/upload/${i}`, { method: "POST", body: "x".repeat(2048 + i) });
        return `${res.status} ${await res.text()}`;
      }),
    );
    expect(answers).toEqual(Array(20).fill("200 alive"));
    // Some of them were placed on the dead backend first and moved (the ring spreads new sessions).
    expect(p.log.lines.filter((l) => l.code === "CONNECT_FAILED").length).toBeGreaterThan(0);
  } finally {
    await p.stop();
    await alive.stop();
  }
});

test("a POST cut on a reused connection is not sent to another backend: 502, not 400", async () => {
  // "a" answers GETs with keep-alive; a POST makes it read the request, drop the connection unanswered and stop listening.
  const postsSeen: string[] = [];
  const a = Bun.listen<{ buf: string }>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        s.data = { buf: "" };
      },
      data(s, chunk) {
        s.data.buf += new TextDecoder("latin1").decode(chunk);
        const end = s.data.buf.indexOf("\r\n\r\n");
        if (end === -1) return;
        const length = Number(/content-length: (\d+)/i.exec(s.data.buf)?.[1] ?? 0);
        if (s.data.buf.length < end + 4 + length) return;
        const head = s.data.buf;
        s.data.buf = "";
        if (head.startsWith("POST")) {
          postsSeen.push("a");
          s.end();
          a.stop(true);
        } else s.write("HTTP/1.1 200 OK\r\nX-Backend: a\r\nContent-Length: 1\r\n\r\na");
      },
    },
  });
  const b = await procBackend("b");
  const p = startWithAudit({
    listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
    pools: {
      app: {
        backends: [
          { id: "a", url: `http://127.0.0.1:${a.port}` },
          { id: "b", url: b.url },
        ],
        persistence: [{ type: "cookie", mode: "insert", name: "TETHER" }],
        maxFails: 0,
      },
    },
    secrets: { cookieKeys: [KEY] },
    accessLog: true,
  } as ConfigInput);
  try {
    let cookie = "";
    for (let i = 0; i < 100 && !cookie; i++) {
      const res = await fetch(`${p.url()}/`);
      if (res.headers.get("x-backend") === "a")
        cookie = (res.headers.getSetCookie()[0] ?? "").split(";")[0] ?? "";
      await res.text();
    }
    expect(cookie).not.toBe("");
    const res = await fetch(`${p.url()}/pay`, { method: "POST", headers: { cookie }, body: "amount=100" });
    expect(res.status).toBe(502);
    await res.text();
    expect(postsSeen).toEqual(["a"]);
    // "b" never saw it: the request may have been handled by "a".
    expect(p.log.lines.some((l) => l.msg === "request" && l.method === "POST" && l.backend === "b")).toBe(
      false,
    );
  } finally {
    await p.stop();
    a.stop(true);
    await b.stop();
  }
});
