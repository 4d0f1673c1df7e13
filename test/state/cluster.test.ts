import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Encoder } from "@msgpack/msgpack";
import { RedisClient } from "bun";
import type { Logger } from "../../src/log.ts";
import type { OperatorState } from "../../src/pool/drain.ts";
import { type ClusterHooks, ClusterSync } from "../../src/state/cluster.ts";
import { startRedis, type TestRedis } from "../support/redis.ts";

const PREFIX = "tether:";
const LOOKUP_TIMEOUT_MS = 5;

interface Node {
  sync: ClusterSync;
  learned: [string, string, number, string, number][];
  states: [string, string, OperatorState][];
  logs: { level: string; msg: string; fields?: Record<string, unknown> }[];
}

function node(url: string, lookupTimeoutMs = LOOKUP_TIMEOUT_MS): Node {
  const n: Node = { learned: [], states: [], logs: [] } as unknown as Node;
  const at =
    (level: string) =>
    (msg: string, fields?: Record<string, unknown>): void => {
      n.logs.push({ level, msg, ...(fields ? { fields } : {}) });
    };
  const log: Logger = { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
  const hooks: ClusterHooks = {
    applyLearned: (...e) => void n.learned.push(e),
    applyState: (...s) => void n.states.push(s),
  };
  n.sync = new ClusterSync({ url, prefix: PREFIX, lookupTimeoutMs }, log, hooks);
  return n;
}

async function waitFor(what: string, cond: () => boolean, timeoutMs = 1000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`);
    await Bun.sleep(5);
  }
}

const nowSec = () => Math.floor(Date.now() / 1000);
let nextKey = 1_000_000;
const freshKey = () => nextKey++;

describe("ClusterSync with two instances on one Redis", () => {
  let redis: TestRedis;
  let a: Node;
  let b: Node;
  let raw: RedisClient;

  beforeAll(async () => {
    redis = await startRedis();
    a = node(redis.url);
    b = node(redis.url);
    raw = new RedisClient(redis.url, { enableOfflineQueue: false, autoReconnect: false });
    await Promise.all([a.sync.start(), b.sync.start(), raw.connect()]);
  });
  afterAll(async () => {
    raw?.close();
    await Promise.all([a?.sync.stop(), b?.sync.stop()]);
    await redis?.close();
  });

  test("both connect and subscribe", () => {
    expect(a.sync.connected).toBe(true);
    expect(b.sync.connected).toBe(true);
  });

  test("an entry learned by A reaches B's hook by pub/sub, and B's lookup finds it with its TTL", async () => {
    const key = freshKey();
    const exp = nowSec() + 60;
    a.sync.publishLearned("app", "0:cookie-learn", key, "b2", exp);
    await waitFor("B to apply A's entry", () => b.learned.some((e) => e[2] === key));
    expect(b.learned.find((e) => e[2] === key)).toEqual(["app", "0:cookie-learn", key, "b2", exp]);

    const hit = await b.sync.lookup("app", "0:cookie-learn", key);
    expect(hit?.backendId).toBe("b2");
    // Redis keeps whole seconds from the moment of the SET: the expiry comes back within a second.
    expect(hit?.expiresAtSec).toBeGreaterThanOrEqual(exp - 1);
    expect(hit?.expiresAtSec).toBeLessThanOrEqual(exp);
    expect(await raw.ttl(`${PREFIX}t:app:0:cookie-learn:${key}`)).toBeWithin(58, 61);
    // Stored as the absolute second it is, not a TTL counted from whenever Redis got the write.
    expect(await raw.send("PEXPIRETIME", [`${PREFIX}t:app:0:cookie-learn:${key}`])).toBe(exp * 1000);
  });

  test("a re-pin overwrites the entry everywhere (last writer wins)", async () => {
    const key = freshKey();
    a.sync.publishLearned("app", "t", key, "b1", nowSec() + 60);
    await waitFor("B to learn b1", () => b.learned.some((e) => e[2] === key && e[3] === "b1"));
    b.sync.publishLearned("app", "t", key, "b3", nowSec() + 60);
    await waitFor("A to learn the re-pin to b3", () => a.learned.some((e) => e[2] === key && e[3] === "b3"));
    expect((await a.sync.lookup("app", "t", key))?.backendId).toBe("b3");
  });

  test("a batch larger than 512 entries is split and fully delivered", async () => {
    const first = nextKey;
    nextKey += 1300;
    const exp = nowSec() + 30;
    for (let k = first; k < first + 1300; k++) a.sync.publishLearned("app", "big", k, "b1", exp);
    await waitFor("B to apply 1300 entries", () => b.learned.filter((e) => e[1] === "big").length === 1300);
    expect((await b.sync.lookup("app", "big", first + 1299))?.backendId).toBe("b1");
  });

  test("an already expired entry is neither written nor found", async () => {
    const key = freshKey();
    a.sync.publishLearned("app", "t", key, "b1", nowSec() - 1);
    await Bun.sleep(50);
    expect(await b.sync.lookup("app", "t", key)).toBeNull();
  });

  test("an instance ignores its own messages", async () => {
    const key = freshKey();
    a.sync.publishLearned("app", "t", key, "b1", nowSec() + 60);
    await waitFor("B to apply the entry", () => b.learned.some((e) => e[2] === key));
    await Bun.sleep(20);
    expect(a.learned.some((e) => e[2] === key)).toBe(false);
  });

  test("a state published by A reaches B, and B.loadStates() returns it", async () => {
    a.sync.publishState("app", "b1", { state: "drain", until: 0 });
    await waitFor("B to apply the state", () => b.states.some((s) => s[1] === "b1"));
    expect(b.states.at(-1)).toEqual(["app", "b1", { state: "drain", until: 0 }]);
    a.sync.publishState("app", "b1", { state: "maint", until: 0 });
    a.sync.publishState("api", "x.y-z_9", { state: "ready", until: 0 });
    await waitFor("B to apply both", () => b.states.length >= 3);
    const loaded = await b.sync.loadStates();
    expect(loaded.sort()).toEqual([
      ["api", "x.y-z_9", { state: "ready", until: 0 }],
      ["app", "b1", { state: "maint", until: 0 }],
    ]);
  });

  test("a drain's deadline reaches B as the same absolute time, and loadStates() returns it", async () => {
    const until = Date.now() + 90_000;
    a.sync.publishState("app", "b3", { state: "drain", until });
    await waitFor("B to apply the drain", () => b.states.some((s) => s[1] === "b3"));
    expect(b.states.at(-1)).toEqual(["app", "b3", { state: "drain", until }]);
    const loaded = await b.sync.loadStates();
    expect(loaded.find((s) => s[1] === "b3")).toEqual(["app", "b3", { state: "drain", until }]);
  });

  test("lookup of a key nobody learned resolves null", async () => {
    expect(await b.sync.lookup("app", "0:cookie-learn", 123)).toBeNull();
  });

  test("a key without TTL (not written by tether) is not trusted", async () => {
    await raw.set(`${PREFIX}t:app:t:42`, "b1");
    expect(await b.sync.lookup("app", "t", 42)).toBeNull();
  });

  test("garbage and foreign messages on the channel are ignored, and the subscriber keeps working", async () => {
    const enc = new Encoder();
    const b64 = (x: unknown) => Buffer.from(enc.encode(x)).toString("base64");
    const garbage: [string, string][] = [
      ["plain text", "hello"],
      ["empty", ""],
      ["base64 of random bytes", Buffer.from([0xc1, 0xff, 0x00, 0x13]).toString("base64")],
      ["msgpack of a number", b64(7)],
      [
        "another protocol version",
        b64({ v: 2, from: "x", t: "learn", e: ["app", "t", 1, "b1", nowSec() + 60] }),
      ],
      ["no sender", b64({ v: 1, t: "learn", e: ["app", "t", 1, "b1", nowSec() + 60] })],
      ["unknown type", b64({ v: 1, from: "x", t: "explode" })],
      ["learn without entries", b64({ v: 1, from: "x", t: "learn", e: "nope" })],
      [
        "state with an unknown state",
        b64({ v: 1, from: "x", t: "state", pool: "app", backend: "b1", state: "on-fire" }),
      ],
      ["raw binary msgpack", String.fromCharCode(...enc.encode({ v: 1, from: "x", t: "state" }))],
    ];
    const learnedBefore = b.learned.length;
    const statesBefore = b.states.length;
    const ignoredBefore = b.sync.stats.ignored;
    for (const [, message] of garbage) await raw.publish(`${PREFIX}events`, message);
    // Entries with bad fields inside an otherwise valid batch are skipped one by one.
    const key = freshKey();
    await raw.publish(
      `${PREFIX}events`,
      b64({
        v: 1,
        from: "x",
        t: "learn",
        e: [
          "app",
          "t",
          "not-a-number",
          "b1",
          1,
          "app",
          "t",
          -5,
          "b1",
          1,
          "app",
          "t",
          key,
          "b9",
          nowSec() + 60,
        ],
      }),
    );
    await waitFor("B to apply the valid entry sent after the garbage", () =>
      b.learned.some((e) => e[2] === key),
    );
    expect(b.sync.stats.ignored - ignoredBefore).toBe(garbage.length);
    expect(b.learned.slice(learnedBefore)).toEqual([["app", "t", key, "b9", expect.any(Number)]]);
    expect(b.states.length).toBe(statesBefore);
    expect(b.sync.connected).toBe(true);
  });

  test("a throwing hook does not take the subscriber down", async () => {
    const redisUrl = redis.url;
    const c = new ClusterSync(
      { url: redisUrl, prefix: PREFIX, lookupTimeoutMs: LOOKUP_TIMEOUT_MS },
      { debug() {}, info() {}, warn() {}, error() {} },
      {
        applyLearned() {
          throw new Error("boom");
        },
        applyState() {},
      },
    );
    await c.start();
    try {
      a.sync.publishLearned("app", "t", freshKey(), "b1", nowSec() + 60);
      await waitFor("C to receive", () => c.stats.received >= 1);
      a.sync.publishLearned("app", "t", freshKey(), "b1", nowSec() + 60);
      await waitFor("C to receive again", () => c.stats.received >= 2);
    } finally {
      await c.stop();
    }
  });

  test("lookup latency against local Redis (printed, not asserted)", async () => {
    const key = freshKey();
    a.sync.publishLearned("app", "t", key, "b1", nowSec() + 60);
    await waitFor("B to see the entry", () => b.learned.some((e) => e[2] === key));
    // Generous timeout here: this measures Redis and the client, not the deadline.
    const c = node(redis.url, 1000);
    await c.sync.start();
    try {
      const run = async (k: number) => {
        const lat: number[] = [];
        for (let i = 0; i < 1000; i++) {
          const t = performance.now();
          await c.sync.lookup("app", "t", k);
          lat.push(performance.now() - t);
        }
        lat.sort((x, y) => x - y);
        const q = (p: number) => `${((lat[Math.floor(lat.length * p)] ?? 0) * 1000).toFixed(0)} us`;
        return `p50 ${q(0.5)}, p99 ${q(0.99)}, max ${q(0.999)}`;
      };
      await run(key); // warm-up
      console.log(`cluster lookup, hit  (1000 sequential): ${await run(key)}`);
      console.log(`cluster lookup, miss (1000 sequential): ${await run(123)}`);
      expect(c.sync.stats.hits).toBe(2000);
    } finally {
      await c.sync.stop();
    }
  });
});

describe("ClusterSync when Redis goes away", () => {
  let redis: TestRedis;
  let a: Node;
  let b: Node;

  beforeAll(async () => {
    redis = await startRedis();
    a = node(redis.url);
    b = node(redis.url);
    await Promise.all([a.sync.start(), b.sync.start()]);
  });
  afterAll(async () => {
    await Promise.all([a?.sync.stop(), b?.sync.stop()]);
    await redis?.close();
  });

  test("with Redis stopped, lookups resolve null quickly and publishing neither throws nor queues", async () => {
    const key = freshKey();
    a.sync.publishLearned("app", "t", key, "b1", nowSec() + 60);
    await waitFor("B to see the entry", () => b.learned.some((e) => e[2] === key));

    await redis.stop();
    await waitFor("A to notice", () => !a.sync.connected);
    const t = performance.now();
    const results = await Promise.all([
      a.sync.lookup("app", "t", key),
      a.sync.lookup("app", "t", freshKey()),
    ]);
    const ms = performance.now() - t;
    expect(results).toEqual([null, null]);
    expect(ms).toBeLessThan(200);

    expect(() => {
      for (let i = 0; i < 1000; i++) a.sync.publishLearned("app", "t", freshKey(), "b1", nowSec() + 60);
      a.sync.publishState("app", "b2", { state: "drain", until: 0 });
    }).not.toThrow();
    await waitFor("the batch to be dropped", () => a.sync.stats.dropped >= 1000);
    expect(a.logs.filter((l) => l.level === "warn" && l.msg.includes("connection lost"))).toHaveLength(1);
  });

  test("after Redis restarts on the same port, both reconnect, a state set during the outage is replayed, and publishing works again", async () => {
    await redis.restart();
    await waitFor("A and B to reconnect", () => a.sync.connected && b.sync.connected, 5000);
    // The state set while Redis was down was kept and written on reconnect; B picks it up.
    await waitFor(
      "B to get the replayed state",
      () => b.states.some((s) => s[1] === "b2" && s[2].state === "drain"),
      2000,
    );
    expect(await b.sync.loadStates()).toEqual([["app", "b2", { state: "drain", until: 0 }]]);

    const key = freshKey();
    a.sync.publishLearned("app", "t", key, "b3", nowSec() + 60);
    await waitFor("B to see the new entry", () => b.learned.some((e) => e[2] === key));
    expect((await b.sync.lookup("app", "t", key))?.backendId).toBe("b3");
    expect(a.sync.stats.reconnects).toBeGreaterThanOrEqual(1);
  });

  test("a hung Redis (SIGSTOP): lookups still answer null within about lookupTimeoutMs, and the link is rebuilt after", async () => {
    const key = freshKey();
    a.sync.publishLearned("app", "t", key, "b1", nowSec() + 60);
    await waitFor("B to see the entry", () => b.learned.some((e) => e[2] === key));
    redis.pause();
    try {
      const t = performance.now();
      expect(await b.sync.lookup("app", "t", key)).toBeNull();
      const ms = performance.now() - t;
      expect(ms).toBeGreaterThanOrEqual(LOOKUP_TIMEOUT_MS - 1);
      expect(ms).toBeLessThan(200);
      expect(() => a.sync.publishLearned("app", "t", freshKey(), "b1", nowSec() + 60)).not.toThrow();
      // The PING watchdog gives up on the silent link within ~2 s.
      await waitFor("B to drop the silent link", () => !b.sync.connected, 3000);
    } finally {
      redis.resume();
    }
    await waitFor("B to reconnect", () => b.sync.connected, 5000);
    expect((await b.sync.lookup("app", "t", key))?.backendId).toBe("b1");
  });
});

describe("ClusterSync starting without Redis", () => {
  test("start() returns within about a second without throwing, connects once Redis appears, and writes the states set meanwhile", async () => {
    const redis = await startRedis();
    await redis.stop();
    const a = node(redis.url);
    try {
      const t = performance.now();
      await a.sync.start();
      expect(performance.now() - t).toBeLessThan(1500);
      expect(a.sync.connected).toBe(false);
      expect(await a.sync.lookup("app", "t", 1)).toBeNull();
      expect(await a.sync.loadStates()).toEqual([]);
      expect(a.logs.some((l) => l.level === "warn" && l.msg.includes("unreachable"))).toBe(true);
      a.sync.publishState("app", "b1", { state: "maint", until: 0 });
      await redis.restart();
      await waitFor("A to connect", () => a.sync.connected, 5000);
      // The state set before Redis was reachable is written once it is.
      let loaded: unknown[] = [];
      for (let i = 0; i < 50 && loaded.length === 0; i++) {
        loaded = await a.sync.loadStates();
        if (loaded.length === 0) await Bun.sleep(20);
      }
      expect(loaded).toEqual([["app", "b1", { state: "maint", until: 0 }]]);
    } finally {
      await a.sync.stop();
      await redis.close();
    }
  });
});
