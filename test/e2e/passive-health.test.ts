/**
 * Passive checks on 5xx answers ("failOn5xx": true, "maxFails": 3), with one
 * thread and with two worker threads (the real CLI). Failures are counted per
 * thread: one keep-alive connection keeps every request on one thread, so
 * that thread sees the backend's consecutive 500s. After exactly the third
 * the backend is down in every thread: fresh connections (which the kernel
 * spreads over both workers) never reach it, the admin API shows it down,
 * "down" is logged and audited once, and it comes back after failTimeoutMs.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { backend, rawRequest, type TestBackend } from "../support/backends.ts";
import { tempDir, writeConfig } from "../support/files.ts";
import { type Child, type Running, spawnCli, startInProcess, workersListening } from "../support/tether.ts";

const TOKEN = "passive-health-token";
const FAIL_TIMEOUT_MS = 1500;

/** One client connection sending requests one after another: a single thread serves them all. */
async function keptConnection(port: number) {
  let buf = Buffer.alloc(0);
  let closed = false;
  let wake: (() => void) | null = null;
  const socket = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      data(_s, d) {
        buf = Buffer.concat([buf, d]);
        wake?.();
      },
      close() {
        closed = true;
        wake?.();
      },
    },
  });
  return {
    async get(): Promise<{ status: number; backend: string | null }> {
      socket.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
      for (;;) {
        const end = buf.indexOf("\r\n\r\n");
        if (end >= 0) {
          const head = buf.subarray(0, end).toString("latin1");
          const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1]);
          if (Number.isNaN(length)) throw new Error(`no content-length in ${head}`);
          if (buf.length >= end + 4 + length) {
            buf = buf.subarray(end + 4 + length);
            return {
              status: Number(head.slice(9, 12)),
              backend: /\r\nx-backend: *(\w+)/i.exec(head)?.[1] ?? null,
            };
          }
        }
        if (closed) throw new Error("connection closed");
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
      }
    },
    close: () => socket.end(),
  };
}

interface Harness {
  port: number;
  adminPort: number;
  /** Log lines of every thread so far. */
  lines(): Record<string, unknown>[];
  /** Audit events so far. */
  audit(): Record<string, unknown>[];
  /** Resolves once a log line matches. */
  waitFor(pred: (l: Record<string, unknown>) => boolean): Promise<unknown>;
  workers: number;
}

function backends() {
  const bad = backend("bad", () => new Response("no", { status: 500, headers: { "x-backend": "bad" } }));
  const good = backend("good");
  return { bad, good };
}

function configFor(bad: TestBackend, good: TestBackend, workers: number) {
  return {
    listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
    pools: {
      app: {
        backends: [
          { id: "bad", url: bad.url },
          { id: "good", url: good.url },
        ],
        failOn5xx: true,
        maxFails: 3,
        failTimeoutMs: FAIL_TIMEOUT_MS,
      },
    },
    admin: { address: "127.0.0.1:0", token: TOKEN },
    workers,
    accessLog: true,
    snapshot: false,
  };
}

async function poll(done: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 250; i++) {
    if (done()) return;
    await Bun.sleep(20);
  }
  throw new Error(`never happened: ${what}`);
}

const fresh = (port: number) =>
  rawRequest(port, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").then(
    (raw) => /x-backend: (\w+)/i.exec(raw)?.[1] ?? null,
  );

function passiveSuite(h: () => Harness, bad: () => TestBackend) {
  const health = async () => {
    const res = await fetch(`http://127.0.0.1:${h().adminPort}/api/backends`, {
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    const body = (await res.json()) as { backends: { id: string; health: string }[] };
    return body.backends.find((b) => b.id === "bad")?.health;
  };
  const lines = (msg: string) =>
    h()
      .lines()
      .filter((l) => l.msg === msg && l.backend === "bad");

  test("a backend answering only 500 is down after its third consecutive 500, in every thread, and back after failTimeoutMs", async () => {
    const c = await keptConnection(h().port);
    // Two 500s: still up (the same thread goes on choosing it).
    for (let i = 0; i < 200 && bad().hits < 2; i++) await c.get();
    expect(bad().hits).toBe(2);
    expect(await health()).toBe("up");
    for (let i = 0; i < 200 && bad().hits < 3; i++) await c.get();
    expect(bad().hits).toBe(3);
    // The third 500 ended it: this thread never sends it another request.
    for (let i = 0; i < 30; i++) expect((await c.get()).backend).toBe("good");
    c.close();

    await h().waitFor((l) => l.msg === "backend down" && l.backend === "bad");
    expect(await health()).toBe("down");
    // Fresh connections, spread by the kernel over every worker: none reaches it.
    const answers = await Promise.all(Array.from({ length: 40 }, () => fresh(h().port)));
    expect(answers.every((a) => a === "good")).toBe(true);
    expect(bad().hits).toBe(3);
    if (h().workers > 1) {
      const served = h()
        .lines()
        .filter((l) => l.msg === "request" && l.backend === "good")
        .map((l) => l.worker);
      expect(new Set(served).size).toBe(h().workers);
    }

    await h().waitFor((l) => l.msg === "backend up" && l.backend === "bad");
    expect(await health()).toBe("up");
    for (let i = 0; i < 100 && bad().hits === 3; i++) await fresh(h().port);
    expect(bad().hits).toBeGreaterThan(3);

    expect(lines("backend down")).toHaveLength(1);
    expect(lines("backend up")).toHaveLength(1);
    await poll(
      () =>
        h()
          .audit()
          .some((e) => e.backend === "bad" && e.health === "up"),
      "the audit line of the return",
    );
    const audited = h()
      .audit()
      .filter((e) => e.event === "backend.state" && e.backend === "bad");
    expect(audited.map((e) => e.health)).toEqual(["down", "up"]);
    expect(String(audited[0]?.reason)).toContain("3 consecutive failures (status 500)");
  });
}

describe("passive 5xx checks, workers: 0", () => {
  const { bad, good } = backends();
  let t: Running;
  beforeAll(() => {
    t = startInProcess(configFor(bad, good, 0) as never);
  });
  afterAll(async () => {
    await t?.stop();
    bad.stop();
    good.stop();
  });
  passiveSuite(
    () => ({
      port: t.port(),
      adminPort: t.tether.admin?.port ?? 0,
      lines: () => t.log.lines,
      audit: () => t.audit,
      waitFor: (pred) => poll(() => t.log.lines.some(pred), "a log line"),
      workers: 0,
    }),
    () => bad,
  );
});

describe("passive 5xx checks, workers: 2", () => {
  const { bad, good } = backends();
  const dir = tempDir();
  let child: Child;
  let port = 0;
  let adminPort = 0;
  beforeAll(async () => {
    const file = writeConfig(dir, { ...configFor(bad, good, 2), audit: "audit.log" });
    child = spawnCli(["--config", file]);
    adminPort = await child.listening("admin");
    port = await workersListening(child);
  });
  afterAll(async () => {
    await child?.stop();
    bad.stop();
    good.stop();
  });
  passiveSuite(
    () => ({
      port,
      adminPort,
      lines: () => child.lines,
      audit: () => {
        try {
          return readFileSync(join(dir, "audit.log"), "utf8")
            .split("\n")
            .filter(Boolean)
            .map((l) => JSON.parse(l));
        } catch {
          return [];
        }
      },
      waitFor: (pred) => child.waitFor(pred, 5000),
      workers: 2,
    }),
    () => bad,
  );
});
