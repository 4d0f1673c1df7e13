/**
 * "rebalance" on a cookie-insert rule, end to end with two worker threads and
 * real backends: a backend added by SIGHUP, then one added through the admin
 * API, takes about its share of a "balanced" pool's sessions (all of them its
 * own, none moved elsewhere) and none of a "persistent" pool's.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { backend, rawRequest, type TestBackend } from "../support/backends.ts";
import { tempDir, writeConfig } from "../support/files.ts";
import { type Child, spawnCli, workersListening } from "../support/tether.ts";

const KEY = Buffer.alloc(32, 11).toString("base64");
const TOKEN = "rebalance-token";
const N = 240;

describe("rebalance (workers: 2)", () => {
  let backends: TestBackend[];
  let child: Child;
  const ports: Record<string, number> = {};
  let admin = "";
  const dir = tempDir();
  const write = (count: number) =>
    writeConfig(dir, {
      listeners: ["bal", "per"].map((pool) => ({
        name: pool,
        protocol: "http",
        address: "127.0.0.1:0",
        pool,
      })),
      pools: Object.fromEntries(
        (["balanced", "persistent"] as const).map((mode) => [
          mode.slice(0, 3),
          {
            backends: backends.slice(0, count).map((b, i) => ({ id: `b${i + 1}`, url: b.url })),
            persistence: [{ type: "cookie", mode: "insert", rebalance: mode }],
          },
        ]),
      ),
      secrets: { cookieKeys: [KEY] },
      admin: { address: "127.0.0.1:0", token: TOKEN },
      workers: 2,
      snapshot: false,
      audit: "stdout",
    });

  beforeAll(async () => {
    backends = ["b1", "b2", "b3", "b4", "b5", "b6"].map((n) => backend(n));
    const file = write(4);
    child = spawnCli(["--config", file]);
    ports.bal = await workersListening(child, 2, "bal");
    ports.per = await workersListening(child, 2, "per");
    admin = `http://127.0.0.1:${await child.listening("admin")}`;
  });
  afterAll(async () => {
    await child?.stop();
    for (const b of backends ?? []) b.stop();
  });

  /** One request on its own connection (so either worker may take it): the backend and any new cookie. */
  const get = async (listener: string, cookie: string | null) => {
    const raw = await rawRequest(
      ports[listener] as number,
      `GET / HTTP/1.1\r\nHost: x\r\n${cookie ? `Cookie: ${cookie}\r\n` : ""}Connection: close\r\n\r\n`,
    );
    const backendId = /x-backend: (b\d)/i.exec(raw)?.[1] ?? null;
    const setCookie = /set-cookie: (TETHER=[^;\r\n]+)/i.exec(raw)?.[1] ?? null;
    return { backendId, setCookie };
  };

  /** Clients that keep their cookie as a browser does. */
  interface Client {
    cookie: string | null;
    backendId: string | null;
  }
  const clients: Record<string, Client[]> = { bal: [], per: [] };
  const visit = (listener: string) =>
    Promise.all(
      (clients[listener] as Client[]).map(async (c) => {
        const r = await get(listener, c.cookie);
        if (r.setCookie) c.cookie = r.setCookie;
        c.backendId = r.backendId;
        return r.backendId;
      }),
    );

  /** Polls `read` until it returns `count` items (audit lines reach stdout from the primary). */
  const until = async <T>(read: () => T[], count: number): Promise<T[]> => {
    const end = Date.now() + 5_000;
    while (read().length < count && Date.now() < end) await Bun.sleep(20);
    await Bun.sleep(50);
    const got = read();
    expect(got.length).toBe(count);
    return got;
  };

  /** Sessions placed, then the backend each is on after a change, compared per pool. */
  const moves = (before: (string | null)[], after: (string | null)[]) => {
    const moved = after.filter((b, i) => b !== before[i]);
    return { count: moved.length, to: new Set(moved) };
  };

  test("a fifth backend added by SIGHUP takes about a fifth of the balanced sessions, all to it; persistent moves none", async () => {
    for (const l of ["bal", "per"])
      clients[l] = Array.from({ length: N }, () => ({ cookie: null, backendId: null }));
    const firstBal = await visit("bal");
    const firstPer = await visit("per");
    expect(new Set(firstBal).size).toBe(4);
    expect(clients.bal?.every((c) => c.cookie !== null)).toBe(true);
    // Returning clients stay, on either worker, while nothing changes.
    expect(await visit("bal")).toEqual(firstBal);

    write(5);
    child.proc.kill("SIGHUP");
    await child.waitFor((l) => l.msg === "config reloaded");
    const bal = moves(firstBal, await visit("bal"));
    const per = moves(firstPer, await visit("per"));
    // Binomial(240, 1/5): mean 48, sd ~6.2; bounds at about +-4 sd plus the ring's few percent.
    expect(bal.count).toBeGreaterThan(20);
    expect(bal.count).toBeLessThan(80);
    expect([...bal.to]).toEqual(["b5"]);
    expect(per.count).toBe(0);
    // Each move is audited once, as rebalanced, from its old backend to b5.
    const audited = await until(
      () => child.lines.filter((l) => l.event === "session.repinned" && l.why === "rebalanced"),
      bal.count,
    );
    expect(audited.every((l) => l.pool === "bal" && l.to === "b5" && l.from !== "b5")).toBe(true);
    // A moved session was given a cookie for its new backend: it stays there.
    const settled = clients.bal?.map((c) => c.backendId) ?? [];
    expect(await visit("bal")).toEqual(settled);
  });

  test("a sixth backend added through the admin API does the same", async () => {
    const beforeBal = clients.bal?.map((c) => c.backendId) ?? [];
    const beforePer = clients.per?.map((c) => c.backendId) ?? [];
    for (const pool of ["bal", "per"]) {
      const res = await fetch(`${admin}/api/backends/${pool}`, {
        method: "POST",
        headers: { authorization: `Bearer ${TOKEN}` },
        body: JSON.stringify({ id: "b6", url: backends[5]?.url }),
      });
      expect(res.status).toBe(201);
    }
    // Both workers serve the new membership once b6 answers requests for new sessions.
    const end = Date.now() + 10_000;
    let seen = 0;
    while (seen < 20 && Date.now() < end) if ((await get("per", null)).backendId === "b6") seen++;
    expect(seen).toBe(20);
    const bal = moves(beforeBal, await visit("bal"));
    const per = moves(beforePer, await visit("per"));
    // Binomial(240, 1/6): mean 40, sd ~5.8.
    expect(bal.count).toBeGreaterThan(15);
    expect(bal.count).toBeLessThan(70);
    expect([...bal.to]).toEqual(["b6"]);
    expect(per.count).toBe(0);
  });
});
