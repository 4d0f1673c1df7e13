import { afterAll, beforeAll, describe, expect, setSystemTime, test } from "bun:test";
import { RedisClient } from "bun";
import type { Logger } from "../../src/log.ts";
import { RedisLink } from "../../src/state/redis-link.ts";
import { startRedis, type TestRedis } from "../support/redis.ts";

const CHANNEL = "link-test:events";

interface Probe {
  link: RedisLink;
  messages: string[];
  lost: Error[];
  reconnected: boolean[];
  warnings: { msg: string; fields?: Record<string, unknown> }[];
}

function probe(url: string): Probe {
  const p = { messages: [], lost: [], reconnected: [], warnings: [] } as unknown as Probe;
  const quiet = () => {};
  const log: Logger = {
    debug: quiet,
    info: quiet,
    warn: (msg, fields) => void p.warnings.push({ msg, ...(fields ? { fields } : {}) }),
    error: quiet,
  };
  p.link = new RedisLink({ url, channel: CHANNEL, name: "test" }, log, {
    message: (m) => void p.messages.push(m),
    lost: (e) => void p.lost.push(e),
    reconnected: (wasConnected) => void p.reconnected.push(wasConnected),
  });
  return p;
}

async function waitFor(what: string, cond: () => boolean, timeoutMs = 1000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${what}`);
    await Bun.sleep(5);
  }
}

/** Publishes from a separate, short-lived client, as another instance would. */
async function publish(url: string, message: string): Promise<void> {
  const raw = new RedisClient(url, { enableOfflineQueue: false, autoReconnect: false });
  try {
    await raw.connect();
    await raw.publish(CHANNEL, message);
  } finally {
    raw.close();
  }
}

describe("RedisLink against a real redis-server", () => {
  let redis: TestRedis;
  let p: Probe;

  beforeAll(async () => {
    redis = await startRedis();
    p = probe(redis.url);
  });
  afterAll(async () => {
    await p?.link.stop();
    await redis?.close();
  });

  test("start() connects both clients and subscribes to the channel", async () => {
    expect(await p.link.start()).toBeNull();
    expect(p.link.connected).toBe(true);
    expect(await p.link.cmd?.send("PING", [])).toBe("PONG");
    await publish(redis.url, "hello");
    await waitFor("the message on the channel", () => p.messages.includes("hello"));
  });

  test("with Redis stopped, the link reports itself lost and offers no command client", async () => {
    await redis.stop();
    await waitFor("the link to be lost", () => p.lost.length === 1);
    expect(p.link.connected).toBe(false);
    expect(p.link.cmd).toBeNull();
  });

  test("after Redis restarts, the link reconnects on its own and is subscribed again", async () => {
    await redis.restart();
    await waitFor("the link to reconnect", () => p.link.connected, 5000);
    await waitFor("the reconnected handler", () => p.reconnected.length >= 1);
    expect(p.reconnected[0]).toBe(true);
    await publish(redis.url, "after the outage");
    await waitFor("the message after reconnecting", () => p.messages.includes("after the outage"));
  });

  test("stop() runs the drain on the live link, then closes both connections", async () => {
    let sawCmd: RedisClient | null = null;
    await p.link.stop(() => {
      sawCmd = p.link.cmd;
      return sawCmd?.send("PING", []) ?? null;
    });
    expect(sawCmd).not.toBeNull();
    expect(p.link.connected).toBe(false);
    expect(p.link.cmd).toBeNull();
  });
});

describe("RedisLink starting without Redis", () => {
  test("start() resolves with the error within about a second, and the link connects once Redis appears", async () => {
    const redis = await startRedis();
    await redis.stop();
    const p = probe(redis.url);
    try {
      const t = performance.now();
      expect(await p.link.start()).toBeInstanceOf(Error);
      expect(performance.now() - t).toBeLessThan(1500);
      expect(p.link.connected).toBe(false);
      await redis.restart();
      await waitFor("the link to connect", () => p.link.connected, 5000);
      // It had never been up: the owner is told so.
      await waitFor("the reconnected handler", () => p.reconnected.length === 1);
      expect(p.reconnected).toEqual([false]);
      expect(p.lost).toHaveLength(0);
    } finally {
      await p.link.stop();
      await redis.close();
    }
  });
});

describe("RedisLink.report", () => {
  test("logs the same failure once per period with the count of suppressed ones, and other failures apart", () => {
    const p = probe("redis://127.0.0.1:1");
    p.link.report("lookup", new Error("boom"));
    p.link.report("lookup", new Error("boom again"));
    p.link.report("lookup", "not an error");
    p.link.report("state write", new Error("down"));
    expect(p.warnings).toEqual([
      { msg: "test: redis lookup failed", fields: { error: "boom" } },
      { msg: "test: redis state write failed", fields: { error: "down" } },
    ]);
    setSystemTime(new Date(Date.now() + 10_001));
    try {
      p.link.report("lookup", new Error("later"));
    } finally {
      setSystemTime();
    }
    expect(p.warnings[2]).toEqual({
      msg: "test: redis lookup failed",
      fields: { error: "later", suppressed: 2 },
    });
  });
});
