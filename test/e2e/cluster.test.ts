/**
 * Two tether instances sharing learned sessions and backend states through a
 * real Redis; Redis stopping mid-test loses no request.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createAudit } from "../../src/audit.ts";
import type { ConfigInput } from "../../src/config/schema.ts";
import { startTether, type Tether } from "../../src/server/app.ts";
import { sessionBackends, type TestBackend } from "../support/backends.ts";
import { startRedis, type TestRedis } from "../support/redis.ts";
import { memoryLogger, config as resolve } from "../support/tether.ts";

const KEY = Buffer.alloc(32, 8).toString("base64");
const TOKEN = "cluster-test-token";

describe("two instances through Redis", () => {
  let redis: TestRedis;
  let backends: TestBackend[];
  let a: Tether;
  let b: Tether;
  const url = (t: Tether) => `http://127.0.0.1:${[...t.listeners.values()][0]?.server.port}`;

  beforeAll(async () => {
    redis = await startRedis();
    backends = sessionBackends();
    const input = {
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: {
        app: {
          backends: backends.map((x, i) => ({ id: `b${i + 1}`, url: x.url })),
          persistence: [{ type: "cookie", mode: "learn", name: "SID" }],
        },
      },
      secrets: { cookieKeys: [KEY] },
      admin: { address: "127.0.0.1:0", token: TOKEN },
      cluster: { redis: { url: redis.url, lookupTimeoutMs: 50 } },
    } as ConfigInput;
    const audit = createAudit(undefined, () => {});
    a = startTether(resolve(input), memoryLogger(), { audit });
    b = startTether(resolve(input), memoryLogger(), { audit });
    await Bun.sleep(300); // both connect and subscribe
  });
  afterAll(async () => {
    await a?.stop(100);
    await b?.stop(100);
    for (const x of backends ?? []) x.stop();
    await redis?.stop();
  });

  test("a session learned by one instance is honoured by the other", async () => {
    const first = await fetch(`${url(a)}/`);
    const sid = (first.headers.get("set-cookie") ?? "").split(";")[0] as string;
    const home = first.headers.get("x-backend");
    await Bun.sleep(100);
    for (let i = 0; i < 10; i++) {
      const res = await fetch(`${url(b)}/`, { headers: { cookie: sid } });
      expect(res.headers.get("x-backend")).toBe(home);
    }
  });

  test("a backend drained on one instance is drained on the other", async () => {
    const res = await fetch(`http://127.0.0.1:${a.admin?.port}/api/backends/app/b2`, {
      method: "PUT",
      headers: { authorization: `Bearer ${TOKEN}` },
      body: '{"state":"drain"}',
    });
    expect(res.status).toBe(200);
    let state = "";
    for (let i = 0; i < 50 && state !== "drain"; i++) {
      await Bun.sleep(20);
      state = b.runtime.pools.get("app")?.get("b2")?.state ?? "";
    }
    expect(state).toBe("drain");
    for (let i = 0; i < 30; i++) expect((await fetch(`${url(b)}/`)).headers.get("x-backend")).not.toBe("b2");
  });

  test("stopping Redis mid-traffic loses no request", async () => {
    let failed = 0;
    let ok = 0;
    const traffic = (async () => {
      for (let i = 0; i < 200; i++) {
        const res = await fetch(`${url(i % 2 ? a : b)}/`, { headers: { cookie: `SID=unknown-${i}` } });
        if (res.status === 200) ok++;
        else failed++;
      }
    })();
    await Bun.sleep(20);
    await redis.stop();
    await traffic;
    expect(failed).toBe(0);
    expect(ok).toBe(200);
  });
});
