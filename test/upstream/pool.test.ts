import { describe, expect, test } from "bun:test";
import { IdlePool, type Pooled } from "../../src/proxy/upstream/pool.ts";

class Fake implements Pooled {
  idleSince = 0;
  closed = false;
  constructor(
    readonly key: string,
    readonly name = key,
  ) {}
  close(): void {
    this.closed = true;
  }
}

describe("IdlePool", () => {
  test("take returns the most recently parked connection of that key", () => {
    const pool = new IdlePool<Fake>(8, 30_000);
    const a1 = new Fake("a", "a1");
    const a2 = new Fake("a", "a2");
    pool.put(a1);
    pool.put(a2);
    pool.put(new Fake("b"));
    expect(pool.take("a")).toBe(a2);
    expect(pool.take("a")).toBe(a1);
    expect(pool.take("a")).toBeUndefined();
    expect(pool.idleCount).toBe(1);
    pool.closeAll();
  });

  test("put refuses past maxPerKey", () => {
    const pool = new IdlePool<Fake>(2, 30_000);
    expect(pool.put(new Fake("a"))).toBe(true);
    expect(pool.put(new Fake("a"))).toBe(true);
    expect(pool.put(new Fake("a"))).toBe(false);
    expect(pool.put(new Fake("b"))).toBe(true);
    expect(pool.idleCount).toBe(3);
    pool.closeAll();
  });

  test("remove drops a parked connection and ignores unknown ones", () => {
    const pool = new IdlePool<Fake>(8, 30_000);
    const a = new Fake("a");
    pool.put(a);
    pool.remove(new Fake("a"));
    pool.remove(new Fake("zzz"));
    expect(pool.idleCount).toBe(1);
    pool.remove(a);
    expect(pool.idleCount).toBe(0);
    expect(pool.take("a")).toBeUndefined();
    expect(a.closed).toBe(false);
    pool.closeAll();
  });

  test("sweep closes connections idle for idleTimeoutMs, oldest first", () => {
    const pool = new IdlePool<Fake>(8, 1000);
    const old = new Fake("a", "old");
    const young = new Fake("a", "young");
    pool.put(old);
    pool.put(young);
    old.idleSince = 0;
    young.idleSince = 500;
    pool.sweep(1200);
    expect(old.closed).toBe(true);
    expect(young.closed).toBe(false);
    expect(pool.take("a")).toBe(young);
    pool.closeAll();
  });

  test("the sweep timer runs by itself", async () => {
    const pool = new IdlePool<Fake>(8, 20);
    const a = new Fake("a");
    pool.put(a);
    await Bun.sleep(80);
    expect(a.closed).toBe(true);
    expect(pool.idleCount).toBe(0);
  });

  test("closeAll closes everything", () => {
    const pool = new IdlePool<Fake>(8, 30_000);
    const all = [new Fake("a"), new Fake("a"), new Fake("b")];
    for (const conn of all) pool.put(conn);
    pool.closeAll();
    expect(all.every((conn) => conn.closed)).toBe(true);
    expect(pool.idleCount).toBe(0);
  });
});
