/**
 * A drain with a deadline, end to end with two worker threads: the backend
 * keeps its sessions until the deadline, then goes to maintenance; its
 * sessions move once and its WebSockets close with 1001. The deadline is an
 * absolute time that survives a reload and a restart (snapshot).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { adminClient } from "../support/admin.ts";
import { getOnFreshConnection, wsEchoBackend } from "../support/backends.ts";
import { tempDir, writeConfig } from "../support/files.ts";
import { type Child, spawnCli, workersListening } from "../support/tether.ts";
import { until } from "../support/wait.ts";

const TOKEN = "drain-deadline-token";
const KEY = Buffer.alloc(32, 9).toString("base64");

interface BackendJson {
  id: string;
  state: string;
  activeSessions: number;
  drain: { deadline: string; leftMs: number; sessionsPinned: number } | null;
}

describe("drain with a deadline (workers: 2)", () => {
  const dir = tempDir();
  const servers = ["b1", "b2", "b3"].map((name) => wsEchoBackend(name));
  let file = "";
  let child: Child;
  let port = 0;
  let adminPort = 0;

  const start = async () => {
    child = spawnCli(["--config", file]);
    adminPort = await child.listening("admin");
    port = await workersListening(child);
  };
  beforeAll(async () => {
    file = writeConfig(dir, {
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: {
        app: {
          backends: servers.map((s, i) => ({ id: `b${i + 1}`, url: `http://127.0.0.1:${s.port}` })),
          persistence: [{ type: "cookie", mode: "insert", name: "TETHER" }],
          drainDeadlineMs: 600_000,
        },
      },
      secrets: { cookieKeys: [KEY] },
      workers: 2,
      admin: { address: "127.0.0.1:0", token: TOKEN },
      snapshot: { file: join(dir, "state.msgpack"), intervalMs: 60_000 },
      audit: "stdout",
    });
    await start();
  });
  afterAll(async () => {
    await child?.stop();
    for (const s of servers) s.stop(true);
  });

  const { api, backends } = adminClient<BackendJson>(() => adminPort, TOKEN);
  const get = (cookie?: string) => getOnFreshConnection(port, cookie);

  test("the backend keeps its sessions until the deadline, then they move once and its WebSockets close with 1001", async () => {
    const sessions = await Promise.all(Array.from({ length: 24 }, () => get()));
    const home = sessions[0]?.backend as string;
    const mine = sessions.filter((s) => s.backend === home).map((s) => s.cookie as string);
    expect(mine.length).toBeGreaterThan(0);

    const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { headers: { cookie: mine[0] as string } } as never);
    const closed = new Promise<number>((resolve) => {
      ws.onclose = (e) => resolve(e.code);
    });
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error("websocket did not open"));
    });
    const echoed = new Promise<string>((resolve) => {
      ws.onmessage = (e) => resolve(String(e.data));
    });
    ws.send("hi");
    expect(await echoed).toBe(`${home}:hi`);

    const put = await api("PUT", `/api/backends/app/${home}`, { state: "drain", deadlineMs: 8000 });
    expect(put.status).toBe(200);
    expect(put.body.backend?.state).toBe("drain");
    const left = put.body.backend?.drain?.leftMs ?? 0;
    expect(left).toBeGreaterThan(0);
    expect(left).toBeLessThanOrEqual(8000);

    // Before the deadline: every session stays, on every worker; new sessions go elsewhere.
    const before = await Promise.all(mine.flatMap((c) => [get(c), get(c)]));
    expect(before.every((r) => r.backend === home)).toBe(true);
    const fresh = await Promise.all(Array.from({ length: 12 }, () => get()));
    expect(fresh.some((r) => r.backend === home)).toBe(false);

    // The API estimates the sessions still pinned (workers report once a second).
    let view: BackendJson | undefined;
    for (let i = 0; i < 40; i++) {
      view = (await backends()).find((b) => b.id === home);
      if ((view?.drain?.sessionsPinned ?? 0) >= mine.length) break;
      await Bun.sleep(50);
    }
    expect(view?.drain?.sessionsPinned).toBeGreaterThanOrEqual(mine.length);

    // At the deadline: the WebSocket is closed as "going away", and the backend is in maintenance.
    // Each thread reaches the deadline by its own timer: the primary's (the API's view, the audit
    // line) may fire just after the worker's closed the socket.
    expect(await closed).toBe(1001);
    const inMaint = async () => (await backends()).find((b) => b.id === home)?.state === "maint";
    await until(inMaint, 5000, "the primary to put the backend in maintenance");
    expect((await backends()).find((b) => b.id === home)).toMatchObject({ state: "maint", drain: null });
    const isDeadline = (l: Record<string, unknown>) => l.event === "backend.state" && l.by === "deadline";
    await child.waitFor(isDeadline, 5000);
    expect(child.lines.filter(isDeadline)).toEqual([
      expect.objectContaining({ backend: home, from: "drain", state: "maint" }),
    ]);

    // Each session moves once: a new cookie for another backend, where it then stays.
    for (const c of mine) {
      const moved = await get(c);
      expect(moved.backend).not.toBe(home);
      expect(moved.cookie).toBeString();
      const again = await Promise.all([get(moved.cookie as string), get(moved.cookie as string)]);
      expect(again.map((r) => r.backend)).toEqual([moved.backend, moved.backend]);
      expect(again.every((r) => r.cookie === null)).toBe(true);
    }
    await api("PUT", `/api/backends/app/${home}`, { state: "ready" });
  });

  test("a drain without deadlineMs takes the pool's drainDeadlineMs; the deadline is kept across SIGHUP and a restart", async () => {
    const t0 = Date.now();
    const put = await api("PUT", "/api/backends/app/b2", { state: "drain" });
    expect(put.status).toBe(200);
    const deadline = put.body.backend?.drain?.deadline as string;
    expect(Date.parse(deadline) - t0).toBeGreaterThanOrEqual(600_000 - 50);
    expect(Date.parse(deadline) - t0).toBeLessThanOrEqual(600_000 + 5000);

    child.proc.kill("SIGHUP");
    await child.waitFor((l) => l.msg === "config reloaded");
    expect((await backends()).find((b) => b.id === "b2")?.drain?.deadline).toBe(deadline);

    await child.stop();
    await start();
    const after = (await backends()).find((b) => b.id === "b2");
    expect(after?.state).toBe("drain");
    expect(after?.drain?.deadline).toBe(deadline);
  });

  test("bad deadlines are refused with a reason", async () => {
    expect(await api("PUT", "/api/backends/app/b3", { state: "maint", deadlineMs: 5 })).toEqual({
      status: 400,
      body: { error: 'deadlineMs goes only with "state": "drain"' },
    });
    expect((await api("PUT", "/api/backends/app/b3", { state: "drain", deadlineMs: -1 })).status).toBe(400);
  });
});
