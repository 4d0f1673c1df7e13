/**
 * "stick": true on a header hash rule and on a url rule, end to end with two
 * worker threads and a real Redis: a backend added by SIGHUP moves no
 * remembered key, and only a rule with "share" writes its table to Redis.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { RedisClient } from "bun";
import { rawRequest, sessionBackends, type TestBackend } from "../support/backends.ts";
import { tempDir, writeConfig } from "../support/files.ts";
import { startRedis, type TestRedis } from "../support/redis.ts";
import { type Child, spawnCli, workersListening } from "../support/tether.ts";

const KEY = Buffer.alloc(32, 4).toString("base64");

describe("stick tables (workers: 2, Redis)", () => {
  let redis: TestRedis;
  let backends: TestBackend[];
  let child: Child;
  let port = 0;
  const dir = tempDir();
  let file = "";
  const write = (count: number) =>
    writeConfig(dir, {
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: {
        app: {
          backends: backends.slice(0, count).map((b, i) => ({ id: `b${i + 1}`, url: b.url })),
          persistence: [
            { type: "header", name: "X-User", stick: true },
            { type: "header", name: "X-Team", stick: true, share: true },
          ],
        },
      },
      secrets: { cookieKeys: [KEY] },
      workers: 2,
      snapshot: false,
      cluster: { redis: { url: redis.url, prefix: "stick:" } },
    });

  beforeAll(async () => {
    redis = await startRedis();
    backends = sessionBackends(["b1", "b2", "b3", "b4", "b5"]);
    file = write(4);
    child = spawnCli(["--config", file]);
    port = await workersListening(child);
  });
  afterAll(async () => {
    await child?.stop();
    for (const b of backends ?? []) b.stop();
    await redis?.close();
  });

  const get = async (header: string) => {
    const raw = await rawRequest(port, `GET / HTTP/1.1\r\nHost: x\r\n${header}\r\nConnection: close\r\n\r\n`);
    return /x-backend: (b\d)/i.exec(raw)?.[1] ?? null;
  };
  const users = Array.from({ length: 60 }, (_, i) => `user-${i}`);

  test("a backend added by SIGHUP moves no remembered key, on either worker; new keys reach it", async () => {
    const first = await Promise.all(users.map((u) => get(`X-User: ${u}`)));
    expect(new Set(first).size).toBe(4);
    // Learned on one worker, announced to the other before its response left.
    const again = await Promise.all(users.map((u) => get(`X-User: ${u}`)));
    expect(again).toEqual(first);

    write(5);
    child.proc.kill("SIGHUP");
    await child.waitFor((l) => l.msg === "config reloaded");
    const after = await Promise.all(users.flatMap((u) => [get(`X-User: ${u}`), get(`X-User: ${u}`)]));
    expect(after).toEqual(first.flatMap((b) => [b, b]));
    const fresh = await Promise.all(Array.from({ length: 80 }, (_, i) => get(`X-User: new-${i}`)));
    expect(fresh).toContain("b5");
  });

  test('only the rule with "share" writes its stick table to Redis', async () => {
    await Promise.all(Array.from({ length: 10 }, (_, i) => get(`X-Team: team-${i}`)));
    const client = new RedisClient(redis.url);
    try {
      let shared: string[] = [];
      for (let i = 0; i < 40 && shared.length < 10; i++) {
        shared = await client.keys("stick:t:app:1:header:*");
        if (shared.length < 10) await Bun.sleep(25);
      }
      expect(shared).toHaveLength(10);
      expect(await client.keys("stick:t:app:0:header:*")).toEqual([]);
    } finally {
      client.close();
    }
  });
});

describe("a url rule with stick (workers: 2, Redis)", () => {
  let redis: TestRedis;
  let backends: TestBackend[];
  let child: Child;
  let port = 0;
  const dir = tempDir();
  let file = "";
  const write = (count: number, into = dir) =>
    writeConfig(into, {
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: {
        app: {
          backends: backends.slice(0, count).map((b, i) => ({ id: `b${i + 1}`, url: b.url })),
          persistence: [
            { type: "url", param: "s", stick: true },
            { type: "url", param: "t", stick: true, share: true },
          ],
        },
      },
      secrets: { cookieKeys: [KEY] },
      workers: 2,
      snapshot: false,
      // A loaded test machine answers in more than the default 5 ms: a timeout would count as a miss.
      cluster: { redis: { url: redis.url, prefix: "urlstick:", lookupTimeoutMs: 2_000 } },
    });

  beforeAll(async () => {
    redis = await startRedis();
    backends = sessionBackends(["b1", "b2", "b3", "b4", "b5", "b6"]);
    file = write(4);
    child = spawnCli(["--config", file]);
    port = await workersListening(child);
  });
  afterAll(async () => {
    await child?.stop();
    for (const b of backends ?? []) b.stop();
    await redis?.close();
  });

  const get = async (target: string, at = port) => {
    const raw = await rawRequest(at, `GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    return /x-backend: (b\d)/i.exec(raw)?.[1] ?? null;
  };
  const sids = Array.from({ length: 60 }, (_, i) => `made-up-${i}`);

  test("a backend added by SIGHUP moves no ID the ring placed, on either worker; new IDs reach it", async () => {
    const first = await Promise.all(sids.map((s) => get(`/cart?s=${s}`)));
    expect(new Set(first).size).toBe(4);
    const again = await Promise.all(sids.map((s) => get(`/cart?s=${s}`)));
    expect(again).toEqual(first);

    write(5);
    child.proc.kill("SIGHUP");
    await child.waitFor((l) => l.msg === "config reloaded");
    const after = await Promise.all(sids.flatMap((s) => [get(`/cart?s=${s}`), get(`/a;x=1?s=${s}`)]));
    expect(after).toEqual(first.flatMap((b) => [b, b]));
    const fresh = await Promise.all(Array.from({ length: 80 }, (_, i) => get(`/?s=new-${i}`)));
    expect(fresh).toContain("b5");
  });

  test('only the rule with "share" writes its stick table to Redis', async () => {
    await Promise.all(Array.from({ length: 10 }, (_, i) => get(`/?t=tab-${i}`)));
    const client = new RedisClient(redis.url);
    try {
      let shared: string[] = [];
      for (let i = 0; i < 40 && shared.length < 10; i++) {
        shared = await client.keys("urlstick:t:app:1:url-stick:*");
        if (shared.length < 10) await Bun.sleep(25);
      }
      expect(shared).toHaveLength(10);
      expect(await client.keys("urlstick:t:app:0:url-stick:*")).toEqual([]);
    } finally {
      client.close();
    }
  });

  test("another instance whose ring differs looks a shared stuck ID up in Redis; an unshared one it cannot", async () => {
    const shared = Array.from({ length: 60 }, (_, i) => `/?t=across-${i}`);
    const local = Array.from({ length: 60 }, (_, i) => `/?s=across-${i}`);
    const client = new RedisClient(redis.url);
    let onA: (string | null)[] = [];
    try {
      const stored = async () => (await client.keys("urlstick:t:app:1:url-stick:*")).length;
      const before = await stored();
      onA = await Promise.all([...shared, ...local].map((t) => get(t)));
      // A's writes to Redis leave in batches: wait until all of them are there.
      for (let i = 0; i < 80 && (await stored()) < before + shared.length; i++) await Bun.sleep(25);
      expect(await stored()).toBe(before + shared.length);
    } finally {
      client.close();
    }
    // B has a sixth backend: its ring puts about a sixth of these IDs elsewhere.
    const other = spawnCli(["--config", write(6, tempDir())]);
    try {
      const at = await workersListening(other);
      // Until a worker's own Redis connection is up, its lookups answer null at once.
      for (const worker of ["0", "1"])
        await other.waitFor((l) => l.msg === "cluster: connected to redis" && l.worker === worker);
      const onB = await Promise.all([...shared, ...local].map((t) => get(t, at)));
      expect(onB.slice(0, shared.length)).toEqual(onA.slice(0, shared.length));
      expect(onB.slice(shared.length)).not.toEqual(onA.slice(shared.length));
      expect(onB.slice(shared.length)).toContain("b6");
    } finally {
      await other.stop();
    }
  });
});
