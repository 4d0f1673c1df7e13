/**
 * Worker threads: sessions learned on one worker are honoured by all, the
 * primary's admin API sees every worker's traffic, shutdown drains.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { backend, rawRequest, sessionBackends, type TestBackend } from "../support/backends.ts";
import { tempDir, writeConfig } from "../support/files.ts";
import { type Child, spawnCli, workersListening } from "../support/tether.ts";

const TOKEN = "workers-test-token";

describe("workers: 2", () => {
  let backends: TestBackend[];
  let child: Child;
  let port = 0;
  let adminPort = 0;

  beforeAll(async () => {
    backends = sessionBackends();
    const file = writeConfig(tempDir(), {
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: {
        app: {
          backends: backends.map((b, i) => ({ id: `b${i + 1}`, url: b.url })),
          persistence: [{ type: "cookie", mode: "learn", name: "SID" }],
        },
      },
      workers: 2,
      admin: { address: "127.0.0.1:0", token: TOKEN },
      snapshot: false,
    });
    child = spawnCli(["--config", file]);
    adminPort = await child.listening("admin");
    await child.waitFor((l) => l.msg === "worker ready" && l.worker === 1, 15_000);
    port = await workersListening(child);
  });
  afterAll(async () => {
    await child?.stop();
    for (const b of backends ?? []) b.stop();
  });

  const backendOf = (raw: string) => /x-backend: (b\d)/i.exec(raw)?.[1] ?? null;
  const get = (cookie?: string) =>
    rawRequest(
      port,
      `GET / HTTP/1.1\r\nHost: x\r\n${cookie ? `Cookie: ${cookie}\r\n` : ""}Connection: close\r\n\r\n`,
    );

  test("both workers serve the settled port", async () => {
    const ready = child.lines.filter(
      (l) => l.msg === "listening" && l.name === "web" && l.worker !== undefined,
    );
    expect(new Set(ready.map((l) => l.worker)).size).toBe(2);
    expect(new Set(ready.map((l) => l.port))).toEqual(new Set([port]));
  });

  test("a session learned on one worker is honoured by every worker within 2 s (50 fresh connections)", async () => {
    const first = await get();
    const sid = /set-cookie: (SID=[^;\r\n]+)/i.exec(first)?.[1] as string;
    const home = backendOf(first);
    expect(sid).toBeString();
    const deadline = Date.now() + 2000;
    let answers: (string | null)[] = [];
    do {
      answers = await Promise.all(Array.from({ length: 50 }, () => get(sid).then(backendOf)));
      if (answers.every((a) => a === home)) break;
      await Bun.sleep(50);
    } while (Date.now() < deadline);
    expect(answers.every((a) => a === home)).toBe(true);
  });

  test("the primary's admin API counts the traffic of every worker", async () => {
    // Workers report once a second: let earlier tests' traffic arrive first.
    await Bun.sleep(1200);
    const before = (await (
      await fetch(`http://127.0.0.1:${adminPort}/api/backends`, {
        headers: { authorization: `Bearer ${TOKEN}` },
      })
    ).json()) as {
      backends: { requests: number }[];
    };
    const start = before.backends.reduce((n, b) => n + b.requests, 0);
    await Promise.all(Array.from({ length: 40 }, () => get()));
    let total = start;
    for (let i = 0; i < 40 && total < start + 40; i++) {
      await Bun.sleep(100);
      const now = (await (
        await fetch(`http://127.0.0.1:${adminPort}/api/backends`, {
          headers: { authorization: `Bearer ${TOKEN}` },
        })
      ).json()) as {
        backends: { requests: number }[];
      };
      total = now.backends.reduce((n, b) => n + b.requests, 0);
    }
    expect(total).toBe(start + 40);
  });

  test("a state set through the admin API reaches every worker", async () => {
    const res = await fetch(`http://127.0.0.1:${adminPort}/api/backends/app/b1`, {
      method: "PUT",
      headers: { authorization: `Bearer ${TOKEN}` },
      body: '{"state":"maint"}',
    });
    expect(res.status).toBe(200);
    await Bun.sleep(100);
    const answers = await Promise.all(Array.from({ length: 30 }, () => get().then(backendOf)));
    expect(answers.includes("b1")).toBe(false);
    await fetch(`http://127.0.0.1:${adminPort}/api/backends/app/b1`, {
      method: "PUT",
      headers: { authorization: `Bearer ${TOKEN}` },
      body: '{"state":"ready"}',
    });
  });

  test("SIGTERM lets the workers drain an in-flight request, then exits 0", async () => {
    const slow = backend("slow", async () => {
      await Bun.sleep(600);
      return new Response("done");
    });
    const file = writeConfig(tempDir(), {
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: { app: { backends: [{ id: "s", url: slow.url }] } },
      workers: 1,
      snapshot: false,
    });
    const c = spawnCli(["--config", file]);
    const p = Number(
      (await c.waitFor((l) => l.msg === "listening" && l.name === "web" && l.workers === 1, 15_000)).port,
    );
    const pending = fetch(`http://127.0.0.1:${p}/`).then((r) => r.text());
    await Bun.sleep(150);
    c.proc.kill("SIGTERM");
    expect(await pending).toBe("done");
    expect(await c.proc.exited).toBe(0);
    slow.stop();
  });
});

describe("workers: audit", () => {
  test("session events seen in workers reach the primary's audit file", async () => {
    const backends = sessionBackends();
    const dir = tempDir();
    const file = writeConfig(dir, {
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: {
        app: {
          backends: backends.map((b, i) => ({ id: `b${i + 1}`, url: b.url })),
          persistence: [{ type: "cookie", mode: "insert" }],
        },
      },
      workers: 2,
      audit: "audit.log",
      snapshot: false,
    });
    const c = spawnCli(["--config", file]);
    try {
      const p = await workersListening(c);
      await Promise.all(
        Array.from({ length: 10 }, () =>
          rawRequest(p, "GET / HTTP/1.1\r\nHost: x\r\nCookie: TETHER=forged\r\nConnection: close\r\n\r\n"),
        ),
      );
      let lines: Record<string, unknown>[] = [];
      for (let i = 0; i < 50 && lines.filter((l) => l.event === "persistence.rejected").length < 10; i++) {
        await Bun.sleep(50);
        const text = await Bun.file(`${dir}/audit.log`)
          .text()
          .catch(() => "");
        lines = text
          .split("\n")
          .filter(Boolean)
          .map((l) => JSON.parse(l));
      }
      expect(lines.filter((l) => l.event === "persistence.rejected").length).toBe(10);
      expect(lines.filter((l) => l.event === "session.created").length).toBe(10);
      expect(new Set(lines.map((l) => l.worker)).size).toBeGreaterThanOrEqual(1);
    } finally {
      await c.stop();
      for (const b of backends) b.stop();
    }
  });
});
