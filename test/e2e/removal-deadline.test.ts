/**
 * A backend being removed drains with the pool's drainDeadlineMs, end to end
 * with two worker threads: deleted through the admin API, or gone from DNS
 * (dnsmasq). It keeps its sessions and its WebSocket until the deadline; the
 * API shows the deadline as for a drain; at the deadline the WebSocket is
 * closed with 1001 and the backend leaves; its sessions move once.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { Server } from "bun";
import { adminClient } from "../support/admin.ts";
import { getOnFreshConnection, wsEchoBackend } from "../support/backends.ts";
import { startDnsmasq } from "../support/dnsmasq.ts";
import { tempDir, writeConfig } from "../support/files.ts";
import { type Child, spawnCli, workersListening } from "../support/tether.ts";

const TOKEN = "removal-deadline-token";
const KEY = Buffer.alloc(32, 11).toString("base64");

let cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

/** The WebSocket echo backend, stopped after the test. */
function wsBackend(name: string, hostname = "127.0.0.1", port = 0): Server<undefined> {
  const s = wsEchoBackend(name, hostname, port);
  cleanup.push(() => s.stop(true));
  return s;
}

interface BackendJson {
  id: string;
  state: string;
  removing: boolean;
  drain: { deadline: string; leftMs: number; sessionsPinned: number } | null;
}

async function start(config: Record<string, unknown>) {
  const file = writeConfig(tempDir(), {
    listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
    secrets: { cookieKeys: [KEY] },
    workers: 2,
    admin: { address: "127.0.0.1:0", token: TOKEN },
    snapshot: false,
    audit: "stdout",
    ...config,
  });
  const child: Child = spawnCli(["--config", file]);
  cleanup.push(() => child.stop());
  const adminPort = await child.listening("admin");
  const port = await workersListening(child);
  const { api, backends } = adminClient<BackendJson>(adminPort, TOKEN);
  const get = (cookie?: string) => getOnFreshConnection(port, cookie);
  const until = async (cond: () => Promise<boolean>, ms: number, what: string) => {
    const end = Date.now() + ms;
    while (!(await cond())) {
      if (Date.now() > end)
        throw new Error(
          `timed out after ${ms} ms waiting for ${what}\n${child.lines.map((l) => JSON.stringify(l)).join("\n")}`,
        );
      await Bun.sleep(20);
    }
  };
  return { child, port, api, backends, get, until };
}

type Tether = Awaited<ReturnType<typeof start>>;

/** Sessions on `name` among fresh ones, placed until some land there. */
async function sessionsOn(t: Tether, name: string): Promise<string[]> {
  const mine: string[] = [];
  await t.until(
    async () => {
      const fresh = await Promise.all(Array.from({ length: 16 }, () => t.get()));
      for (const s of fresh) if (s.backend === name && s.cookie) mine.push(s.cookie);
      return mine.length > 0;
    },
    5_000,
    `a session on ${name}`,
  );
  return mine;
}

/** A WebSocket through tether with a session's cookie, echoing once; resolves with its close code. */
async function openSocket(port: number, cookie: string, expected: string) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { headers: { cookie } } as never);
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
  expect(await echoed).toBe(`${expected}:hi`);
  let isClosed = false;
  void closed.then(() => {
    isClosed = true;
  });
  return { closed, open: () => !isClosed };
}

/** Each session moves once: a new cookie for another backend, where it then stays. */
async function expectMovedOnce(t: Tether, cookies: string[], gone: string) {
  for (const c of cookies) {
    const moved = await t.get(c);
    expect(moved.backend).not.toBe(gone);
    expect(moved.cookie).toBeString();
    const again = await Promise.all([t.get(moved.cookie as string), t.get(moved.cookie as string)]);
    expect(again.map((r) => r.backend)).toEqual([moved.backend, moved.backend]);
    expect(again.every((r) => r.cookie === null)).toBe(true);
  }
}

describe("removal drains to the pool's drainDeadlineMs (workers: 2)", () => {
  test("DELETE on the admin API: sessions and the WebSocket stay until the deadline, then the socket closes with 1001 and the backend leaves", async () => {
    const [a, b, extra] = [wsBackend("a"), wsBackend("b"), wsBackend("extra")];
    const t = await start({
      pools: {
        app: {
          backends: [
            { id: "a", url: `http://127.0.0.1:${a.port}` },
            { id: "b", url: `http://127.0.0.1:${b.port}` },
          ],
          persistence: [{ type: "cookie", mode: "insert", name: "TETHER" }],
          drainDeadlineMs: 6_000,
        },
      },
    });
    const added = await t.api("POST", "/api/backends/app", {
      id: "extra",
      url: `http://127.0.0.1:${extra.port}`,
    });
    expect(added.status).toBe(201);
    const mine = await sessionsOn(t, "extra");
    const ws = await openSocket(t.port, mine[0] as string, "extra");

    const del = await t.api("DELETE", "/api/backends/app/extra");
    expect(del.status).toBe(202);
    expect(del.body.backend).toMatchObject({ state: "drain", removing: true });
    const left = del.body.backend?.drain?.leftMs ?? 0;
    expect(left).toBeGreaterThan(0);
    expect(left).toBeLessThanOrEqual(6_000);
    const view = (await t.backends()).find((x) => x.id === "extra");
    expect(view?.drain?.deadline).toBe(del.body.backend?.drain?.deadline as string);

    // Before the deadline: every session stays on it, on every worker; the WebSocket stays open.
    const before = await Promise.all(mine.flatMap((c) => [t.get(c), t.get(c)]));
    expect(before.map((r) => r.backend)).toEqual(Array(before.length).fill("extra"));
    expect(ws.open()).toBe(true);

    // At the deadline: the WebSocket is closed as "going away", and the backend leaves.
    expect(await ws.closed).toBe(1001);
    await t.until(async () => !(await t.backends()).some((x) => x.id === "extra"), 5_000, "it to leave");
    const removed = t.child.lines.filter((l) => l.event === "backend.removed");
    expect(removed).toEqual([expect.objectContaining({ backend: "extra", after: "deadline" })]);
    await expectMovedOnce(t, mine, "extra");
  });

  test("a record gone from DNS: the same drain to the deadline, 1001, then it leaves", async () => {
    const first = wsBackend("127.0.0.11", "127.0.0.11");
    const port = first.port ?? 0;
    wsBackend("127.0.0.12", "127.0.0.12", port);
    const line = (i: number) => `127.0.0.${i} app.test`;
    const dns = await startDnsmasq([11, 12].map(line));
    cleanup.push(() => dns.stop());
    const t = await start({
      pools: {
        app: {
          discover: { dns: "app.test", port, intervalMs: 100, holdCount: 2, resolver: dns.address },
          persistence: [{ type: "cookie", mode: "insert", name: "TETHER" }],
          drainDeadlineMs: 6_000,
        },
      },
    });
    await t.until(async () => (await t.backends()).length === 2, 5_000, "two discovered backends");
    const mine = await sessionsOn(t, "127.0.0.12");
    const ws = await openSocket(t.port, mine[0] as string, "127.0.0.12");
    const id = `127.0.0.12_${port}`;

    await dns.setHosts([line(11)], "app.test");
    let view: BackendJson | undefined;
    await t.until(
      async () => {
        view = (await t.backends()).find((x) => x.id === id);
        return view?.removing === true;
      },
      5_000,
      "the removal to begin",
    );
    expect(view?.state).toBe("drain");
    expect(view?.drain?.leftMs).toBeGreaterThan(0);
    expect(view?.drain?.leftMs).toBeLessThanOrEqual(6_000);

    const before = await Promise.all(mine.flatMap((c) => [t.get(c), t.get(c)]));
    expect(before.map((r) => r.backend)).toEqual(Array(before.length).fill("127.0.0.12"));
    expect(ws.open()).toBe(true);

    expect(await ws.closed).toBe(1001);
    await t.until(async () => !(await t.backends()).some((x) => x.id === id), 5_000, "it to leave");
    const removed = t.child.lines.filter((l) => l.event === "backend.removed");
    expect(removed).toEqual([expect.objectContaining({ backend: id, after: "deadline" })]);
    await expectMovedOnce(t, mine, "127.0.0.12");
  });
});
