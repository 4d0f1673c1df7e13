/**
 * A pool's learned tables and the cluster: what a session ID costs in Redis
 * writes and lookups. A real pool (from a config), a real ClusterSync and a
 * real Redis; requests go through the placement's prefetch, the chain's
 * placement and its remember step, without sockets.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { RedisClient } from "bun";
import type { ConfigInput } from "../../src/config/schema.ts";
import type { ClusterLookup } from "../../src/contracts.ts";
import type { ResponseFacts } from "../../src/persistence/types.ts";
import { prefetchLearned } from "../../src/pool/placement.ts";
import type { Pool } from "../../src/pool/pool.ts";
import { buildRuntime } from "../../src/server/runtime.ts";
import { ClusterSync } from "../../src/state/cluster.ts";
import { startRedis, type TestRedis } from "../support/redis.ts";
import { config } from "../support/tether.ts";

const PREFIX = "tether:";
const TABLE = "0:url";
const silent = { debug() {}, info() {}, warn() {}, error() {} };

async function waitFor(what: string, cond: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`);
    await Bun.sleep(5);
  }
}

describe("url sessions through a cluster", () => {
  let redis: TestRedis;
  let raw: RedisClient;
  let sync: ClusterSync;
  let pool: Pool;
  let cluster: ClusterLookup;

  beforeAll(async () => {
    redis = await startRedis();
    raw = new RedisClient(redis.url, { enableOfflineQueue: false, autoReconnect: false });
    const runtime = buildRuntime(
      config({
        listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
        pools: {
          app: {
            backends: ["b1", "b2", "b3"].map((id, i) => ({ id, url: `http://127.0.0.1:${9001 + i}` })),
            persistence: [{ type: "url", param: "sid", maxEntries: 1000 }],
          },
        },
        secrets: { cookieKeys: [Buffer.alloc(32, 9).toString("base64")] },
      } as ConfigInput),
      undefined,
      [],
    );
    pool = runtime.pools.get("app") as Pool;
    sync = new ClusterSync({ url: redis.url, prefix: PREFIX, lookupTimeoutMs: 200 }, silent, {
      applyLearned: () => {},
      applyState: () => {},
    });
    // As the server wires it: every locally learned entry is published.
    for (const [name, table] of pool.chain.tables)
      table.onLearn = (key, backendId, exp) => sync.publishLearned("app", name, key, backendId, exp);
    cluster = sync;
    await Promise.all([sync.start(), raw.connect()]);
  });
  afterAll(async () => {
    raw?.close();
    await sync?.stop();
    await redis?.close();
  });

  const nowSec = () => Math.floor(Date.now() / 1000);
  const facts = (sid: string, at = nowSec()) => ({
    cookie: null,
    target: `/cart?sid=${sid}`,
    clientIp: "203.0.113.5",
    headers: new Headers(),
    nowSec: at,
  });
  const answer = (over: Partial<ResponseFacts> = {}): ResponseFacts => ({
    setCookies: [],
    location: null,
    cacheControl: null,
    secure: false,
    ...over,
  });
  /** One request: the cluster prefetch, the placement, and the remember step for the backend's answer. */
  async function request(sid: string, res = answer(), at = nowSec()): Promise<string> {
    const f = facts(sid, at);
    await prefetchLearned(pool, f, cluster);
    const placed = pool.chain.place(f);
    if (!placed) throw new Error("not placed");
    pool.chain.remember(f, placed.placement, res);
    return placed.placement.backendId;
  }
  const tableKey = (sid: string) => `${PREFIX}t:app:${TABLE}:${pool.chain.tables.get(TABLE)?.keyOf(sid)}`;

  test("made-up ids cost no Redis write or publish; an id a backend issued costs one", async () => {
    const before = sync.stats.published;
    for (let i = 0; i < 200; i++) await request(crypto.randomUUID());
    await request("", answer({ setCookies: ["sid=issued-by-b; Path=/"] }));
    await waitFor("the issued id to be published", () => sync.stats.published > before);
    expect(sync.stats.published - before).toBe(1);
    expect(await raw.exists(tableKey("issued-by-b"))).toBe(true);
  });

  test("an unknown id seen 20 times is looked up once, and again once the miss is forgotten", async () => {
    const at = nowSec();
    const before = sync.stats.lookups;
    for (let i = 0; i < 20; i++) await request("never-issued", answer(), at);
    expect(sync.stats.lookups - before).toBe(1);
    await request("never-issued", answer(), at + 60);
    expect(sync.stats.lookups - before).toBe(2);
  });

  test("an id another instance learned is found by lookup and placed on its backend", async () => {
    await raw.set(tableKey("learned-elsewhere"), "b2", "EX", 60);
    expect(await request("learned-elsewhere")).toBe("b2");
    const placed = pool.chain.place(facts("learned-elsewhere"));
    expect(placed?.placement).toMatchObject({ backendId: "b2", outcome: "hit" });
  });
});
