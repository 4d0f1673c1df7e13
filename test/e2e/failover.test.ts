/**
 * What a pinned session does when its backend cannot serve it: "move" (the
 * default) re-pins it on its next choice; "strict" answers 503 with
 * Retry-After and never moves it, on maintenance and on a failed connect.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { ConfigInput } from "../../src/config/schema.ts";
import { backend, type TestBackend } from "../support/backends.ts";
import { config, type Running, startInProcess } from "../support/tether.ts";

const KEY = Buffer.alloc(32, 9).toString("base64");
const TOKEN = "failover-test-token";

let backends: TestBackend[] = [];
let running: Running | null = null;
afterEach(async () => {
  await running?.stop();
  running = null;
  for (const b of backends) b.stop();
  backends = [];
});

function input(pool: Record<string, unknown>): ConfigInput {
  return {
    listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
    pools: {
      app: {
        backends: backends.map((b, i) => ({ id: `b${i + 1}`, url: b.url })),
        persistence: [{ type: "cookie", mode: "insert" }],
        ...pool,
      },
    },
    secrets: { cookieKeys: [KEY] },
    admin: { address: "127.0.0.1:0", token: TOKEN },
  } as ConfigInput;
}

function start(pool: Record<string, unknown>): Running {
  backends = ["b1", "b2", "b3"].map((n) => backend(n));
  running = startInProcess(input(pool));
  return running;
}

/** A first request: the session's cookie and the backend it was pinned to. */
async function newSession(r: Running): Promise<{ cookie: string; home: string }> {
  const res = await fetch(r.url());
  const home = await res.text();
  const cookie = (res.headers.get("set-cookie") as string).split(";")[0] as string;
  return { cookie, home };
}

const setState = (r: Running, id: string, state: string) =>
  fetch(`http://127.0.0.1:${r.tether.admin?.port}/api/backends/app/${id}`, {
    method: "PUT",
    headers: { authorization: `Bearer ${TOKEN}` },
    body: JSON.stringify({ state }),
  });

describe('"failover": "strict"', () => {
  test("a session whose backend is in maintenance gets 503 with Retry-After, is audited as held, and returns home afterwards; new sessions go elsewhere", async () => {
    const r = start({ failover: "strict", failTimeoutMs: 7000 });
    const { cookie, home } = await newSession(r);
    expect((await setState(r, home, "maint")).status).toBe(200);

    const held = await fetch(r.url(), { headers: { cookie } });
    expect(held.status).toBe(503);
    expect(held.headers.get("retry-after")).toBe("7");
    expect(held.headers.get("set-cookie")).toBeNull();
    await held.text();
    expect(r.audit.find((e) => e.event === "session.held")).toMatchObject({
      backend: home,
      why: "backend-unavailable",
    });

    const fresh = await fetch(r.url());
    expect(fresh.status).toBe(200);
    expect(await fresh.text()).not.toBe(home);

    await setState(r, home, "ready");
    const back = await fetch(r.url(), { headers: { cookie } });
    expect(await back.text()).toBe(home);
  });

  test("a failed connect is not retried elsewhere for a pinned session: 503 with Retry-After, no other backend sees it", async () => {
    const r = start({ failover: "strict", retries: 2 });
    const { cookie, home } = await newSession(r);
    const victim = backends[Number(home.slice(1)) - 1] as TestBackend;
    victim.stop();
    const hitsBefore = backends.map((b) => b.hits);
    const res = await fetch(r.url(), { headers: { cookie } });
    expect(res.status).toBe(503);
    expect(res.headers.get("retry-after")).not.toBeNull();
    await res.text();
    expect(backends.map((b) => b.hits)).toEqual(hitsBefore);
    expect(r.audit.find((e) => e.event === "session.held")).toMatchObject({
      backend: home,
      why: "connect-failed",
    });
  });

  test("kept across a reload", async () => {
    const r = start({ failover: "strict" });
    await r.tether.reload(config(input({ failover: "strict" })));
    const { cookie, home } = await newSession(r);
    await setState(r, home, "maint");
    const res = await fetch(r.url(), { headers: { cookie } });
    expect(res.status).toBe(503);
    await res.text();
  });
});

describe('"failover": "move" (the default)', () => {
  test("a session whose backend is in maintenance moves to another backend and gets a new cookie", async () => {
    const r = start({});
    const { cookie, home } = await newSession(r);
    await setState(r, home, "maint");
    const res = await fetch(r.url(), { headers: { cookie } });
    expect(res.status).toBe(200);
    expect(await res.text()).not.toBe(home);
    expect(res.headers.get("set-cookie")).not.toBeNull();
  });
});
