/**
 * What a membership change moves, counted (not timed): adding one backend to
 * N moves at most 1.1/(N+1) of hash-placed keys (consistent hashing's
 * 1/(N+1), with room for sampling noise), every moved key goes to the new
 * backend, and no key moves between backends that stay.
 */
import { describe, expect, test } from "bun:test";
import { composeConfig } from "../../src/config/members.ts";
import { discoveredId } from "../../src/discovery/reconcile.ts";
import { HashRing } from "../../src/ring/index.ts";
import { buildRuntime } from "../../src/server/runtime.ts";
import { sessionKeyHashes } from "../ring/support.ts";
import { config } from "../support/tether.ts";

const KEYS = 100_000;

/** Ids as DNS discovery makes them: pod addresses on one port. */
const podIds = (n: number, seed: number) =>
  Array.from({ length: n }, (_, i) => discoveredId(`10.${seed}.${i >> 8}.${i & 255}`, 8080));

function owners(ring: Pick<HashRing, "lookup">, keys: Uint32Array): (string | null)[] {
  return Array.from(keys, (k) => ring.lookup(k));
}

describe("adding one backend to N", () => {
  test.each([2, 3, 5, 10, 30, 100])("N = %i: at most 1.1/(N+1) of keys move, all to the new one", (n) => {
    const keys = sessionKeyHashes(n, KEYS);
    const ids = podIds(n + 1, n);
    const before = owners(new HashRing(ids.slice(0, n).map((id) => ({ id, weight: 1 }))), keys);
    const after = owners(new HashRing(ids.map((id) => ({ id, weight: 1 }))), keys);
    const added = ids[n];
    let moved = 0;
    let betweenSurvivors = 0;
    for (let i = 0; i < KEYS; i++) {
      if (before[i] === after[i]) continue;
      moved++;
      if (after[i] !== added) betweenSurvivors++;
    }
    expect(betweenSurvivors).toBe(0);
    expect(moved).toBeGreaterThan(0);
    expect(moved / KEYS).toBeLessThanOrEqual(1.1 / (n + 1));
  });

  test("through the pool as a membership change builds it: the same counts", () => {
    const n = 10;
    const ids = podIds(n + 1, 77);
    const base = config({
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: {
        app: {
          backends: ids.slice(0, n).map((id, i) => ({ id, url: `http://10.77.0.${i}:8080` })),
          persistence: [{ type: "header", name: "x-user" }],
        },
      },
    });
    const key = Buffer.alloc(32, 1);
    const r1 = buildRuntime(base, undefined, [key]);
    const { config: next } = composeConfig(base, [
      { pool: "app", id: ids[n] as string, url: "http://10.77.0.99:8080", weight: 1, source: "dns" },
    ]);
    const r2 = buildRuntime(next, r1, [key]);
    const ring = (r: typeof r1) => {
      const chain = r.pools.get("app")?.chain;
      if (!chain) throw new Error("no pool app");
      return { lookup: (k: number) => chain.ringOwner(k) };
    };
    const keys = sessionKeyHashes(5, KEYS);
    const before = owners(ring(r1), keys);
    const after = owners(ring(r2), keys);
    let moved = 0;
    for (let i = 0; i < KEYS; i++) {
      if (before[i] === after[i]) continue;
      moved++;
      expect(after[i]).toBe(ids[n] as string);
    }
    expect(moved / KEYS).toBeLessThanOrEqual(1.1 / (n + 1));
    // The survivors are the same objects: nothing about them was rebuilt.
    expect(r2.pools.get("app")?.get(ids[0] as string)).toBe(
      r1.pools.get("app")?.get(ids[0] as string) as never,
    );
  });
});
