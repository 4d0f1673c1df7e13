/**
 * The maxConn slot of a backend: taken at once when free, queued first come
 * first served, handed over directly on release.
 */
import { describe, expect, test } from "bun:test";
import { Backend } from "../../src/pool/pool.ts";

const target = { key: "http://127.0.0.1:1", hostname: "127.0.0.1", port: 1 };
const backendWith = (maxConn: number) => new Backend("b1", 1, "ready", target, maxConn, 60_000);

describe("Backend slots under maxConn", () => {
  test("a free slot is taken at once; a full backend refuses tryAcquire", () => {
    const b = backendWith(2);
    expect(b.tryAcquire()).toBe(true);
    expect(b.tryAcquire()).toBe(true);
    expect(b.tryAcquire()).toBe(false);
    expect(b.inflight).toBe(2);
  });

  test("a released slot goes to the queued request, not to one arriving in between", async () => {
    const b = backendWith(1);
    expect(b.tryAcquire()).toBe(true);
    const queued = b.acquire(5_000, new AbortController().signal);
    expect(b.queued).toBe(1);
    b.release();
    // Synchronously after the release, before the waiter's continuation has run: the slot is taken.
    expect(b.tryAcquire()).toBe(false);
    expect(b.inflight).toBe(1);
    expect(await queued).toBe("acquired");
    expect(b.inflight).toBe(1);
    b.release();
    expect(b.inflight).toBe(0);
  });

  test("nobody jumps the queue: a request arriving while others wait queues behind them", async () => {
    const b = backendWith(1);
    b.tryAcquire();
    const order: string[] = [];
    const first = b.acquire(5_000, new AbortController().signal).then((r) => order.push(`first:${r}`));
    expect(b.tryAcquire()).toBe(false);
    const second = b.acquire(5_000, new AbortController().signal).then((r) => order.push(`second:${r}`));
    b.release();
    await first;
    b.release();
    await second;
    expect(order).toEqual(["first:acquired", "second:acquired"]);
    expect(b.inflight).toBe(1);
  });

  test("a wait ends with timeout or aborted and leaves the queue", async () => {
    const b = backendWith(1);
    b.tryAcquire();
    expect(await b.acquire(20, new AbortController().signal)).toBe("timeout");
    const ac = new AbortController();
    const waiting = b.acquire(5_000, ac.signal);
    ac.abort();
    expect(await waiting).toBe("aborted");
    expect(b.queued).toBe(0);
    b.release();
    expect(b.inflight).toBe(0);
  });

  test("WebSockets count apart from requests, under their own limit", () => {
    const b = new Backend("b1", 1, "ready", target, 1, 60_000, 2);
    expect(b.tryAcquire()).toBe(true);
    expect(b.openWebSocket()).toBe(true);
    expect(b.openWebSocket()).toBe(true);
    expect(b.openWebSocket()).toBe(false);
    expect(b.load).toBe(3);
    b.closeWebSocket();
    expect(b.openWebSocket()).toBe(true);
  });
});
