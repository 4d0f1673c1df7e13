import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { BoundedLoad, DEFAULT_HASH_BALANCE_FACTOR, HashRing, type RingMember } from "../../src/ring/index.ts";
import { arbIds, prng, sessionKeyHashes, shuffled } from "./support.ts";

const members = (ids: readonly string[], weights: readonly number[]): RingMember[] =>
  ids.map((id, i) => ({ id, weight: weights[i % weights.length] as number }));

/** The cap bounded loads promise: ceil(c × (total in-flight + 1) × weight share), over eligible backends. */
function capOf(
  ms: readonly RingMember[],
  load: ReadonlyMap<string, number>,
  c: number,
  id: string,
  eligible: (id: string) => boolean = () => true,
) {
  const live = ms.filter((m) => m.weight > 0 && eligible(m.id));
  const total = live.reduce((a, m) => a + (load.get(m.id) ?? 0), 0);
  const weightSum = live.reduce((a, m) => a + m.weight, 0);
  const w = ms.find((m) => m.id === id)?.weight ?? 0;
  return Math.ceil((c * (total + 1) * w) / weightSum - 1e-9);
}

/** Keys whose plain-ring choice is `id`: a skewed key set that would pile onto one backend. */
function keysPreferring(ring: HashRing, id: string, count: number, seed: number): number[] {
  const out: number[] = [];
  for (const k of sessionKeyHashes(seed, count * ring.size * 3)) {
    if (ring.lookup(k) === id) out.push(k);
    if (out.length === count) break;
  }
  return out;
}

describe("BoundedLoad", () => {
  test("default factor is 1.25", () => {
    expect(DEFAULT_HASH_BALANCE_FACTOR).toBe(1.25);
  });

  test.each([0.5, 0.99, -1, Number.NaN, Number.POSITIVE_INFINITY])("factor %p is refused", (factor) => {
    const ring = new HashRing([{ id: "a", weight: 1 }]);
    expect(() => new BoundedLoad(ring, factor, () => 0)).toThrow(/hashBalanceFactor/);
  });

  test("with factor 0 the result equals the plain ring, whatever the loads", () => {
    fc.assert(
      fc.property(
        arbIds(1, 10),
        fc.array(fc.nat(1000), { minLength: 10, maxLength: 10 }),
        fc.integer(),
        (ids, loads, seed) => {
          const ring = new HashRing(members(ids, [1, 2, 1]));
          const load = new Map(ids.map((id, i) => [id, loads[i] as number]));
          const bounded = new BoundedLoad(ring, 0, (id) => load.get(id) ?? 0);
          const up = (id: string) => id !== ids[0];
          for (const k of sessionKeyHashes(seed, 500)) {
            expect(bounded.pick(k)).toBe(ring.lookup(k));
            expect(bounded.pick(k, up)).toBe(ring.lookup(k, up));
          }
        },
      ),
      { numRuns: 20 },
    );
  });

  test("with every load 0 the result equals the plain ring, for any factor", () => {
    fc.assert(
      fc.property(
        arbIds(1, 10),
        fc.double({ min: 1, max: 3, noNaN: true }),
        fc.integer(),
        (ids, factor, seed) => {
          const ring = new HashRing(members(ids, [3, 1, 2]));
          const bounded = new BoundedLoad(ring, factor, () => 0);
          const up = (id: string) => id !== ids[1];
          for (const k of sessionKeyHashes(seed, 500)) {
            expect(bounded.pick(k)).toBe(ring.lookup(k));
            expect(bounded.pick(k, up)).toBe(ring.lookup(k, up));
          }
        },
      ),
      { numRuns: 20 },
    );
  });

  test("a skewed key set that would overload one backend never takes any backend past its cap", () => {
    fc.assert(
      fc.property(
        arbIds(2, 8),
        fc.constantFrom(1, 1.1, 1.25, 1.5, 2),
        fc.constantFrom([1], [1, 2], [3, 1, 1]),
        fc.integer(),
        (ids, c, weights, seed) => {
          const ms = members(ids, weights);
          const ring = new HashRing(ms);
          const hot = ids[0] as string;
          const load = new Map(ids.map((id) => [id, 0]));
          const bounded = new BoundedLoad(ring, c, (id) => load.get(id) ?? 0);
          const next = prng(seed);
          for (const k of keysPreferring(ring, hot, 400, seed)) {
            const id = bounded.pick(k) as string;
            const cap = capOf(ms, load, c, id);
            if ((load.get(id) as number) + 1 > cap) {
              throw new Error(
                `${JSON.stringify(id)} took load ${(load.get(id) as number) + 1} over its cap ${cap}`,
              );
            }
            load.set(id, (load.get(id) as number) + 1);
            // Some requests finish, so loads go down as well as up.
            if (next() % 4 === 0) {
              const done = ids[next() % ids.length] as string;
              load.set(done, Math.max(0, (load.get(done) as number) - 1));
            }
          }
          // Bounding did something when it had to: the hot backend alone would
          // have taken every key. (With c at or above total weight / its
          // weight, the cap never binds; 0.9 leaves room for the ceiling.)
          const share = (ms[0] as RingMember).weight / ms.reduce((a, m) => a + m.weight, 0);
          if (c * share <= 0.9) expect([...load.values()].filter((l) => l > 0).length).toBeGreaterThan(1);
        },
      ),
      { numRuns: 20 },
    );
  });

  test("caps follow weight share: with weights 1:3 and keys that all prefer the light one, loads end near 1:3", () => {
    const ms = members(["light", "heavy"], [1, 3]);
    const ring = new HashRing(ms);
    const load = new Map([
      ["light", 0],
      ["heavy", 0],
    ]);
    const bounded = new BoundedLoad(ring, 1.25, (id) => load.get(id) ?? 0);
    for (const k of keysPreferring(ring, "light", 400, 5)) {
      const id = bounded.pick(k) as string;
      expect(load.get(id) as number).toBeLessThan(capOf(ms, load, 1.25, id));
      load.set(id, (load.get(id) as number) + 1);
    }
    // light may hold at most ceil(1.25 × 400 × 1/4) = 125.
    expect(load.get("light")).toBe(125);
    expect(load.get("heavy")).toBe(275);
  });

  test("overflow from a full backend spreads over all the others (each key's own next choice), not onto one neighbour", () => {
    const ids = [...Array(10).keys()].map((i) => `app-${i}`);
    const ring = new HashRing(members(ids, [1]));
    const load = new Map(ids.map((id) => [id, id === "app-0" ? 100 : 0]));
    const bounded = new BoundedLoad(ring, 1.25, (id) => load.get(id) ?? 0);
    const landed = new Map<string, number>();
    const keys = keysPreferring(ring, "app-0", 9_000, 9);
    for (const k of keys) {
      const id = bounded.pick(k) as string;
      expect(id).not.toBe("app-0");
      expect(id).toBe(ring.lookup(k, (x) => x !== "app-0") as string);
      landed.set(id, (landed.get(id) ?? 0) + 1);
    }
    for (const id of ids.slice(1)) {
      expect(Math.abs((landed.get(id) ?? 0) / 1_000 - 1)).toBeLessThan(0.2);
    }
  });

  test("ineligible backends are never picked and their load does not count; none eligible gives null", () => {
    const ms = members(["a", "b", "c"], [1]);
    const ring = new HashRing(ms);
    const load = new Map([
      ["a", 0],
      ["b", 50],
      ["c", 1000],
    ]);
    const bounded = new BoundedLoad(ring, 1.25, (id) => load.get(id) ?? 0);
    const notC = (id: string) => id !== "c";
    for (const k of sessionKeyHashes(21, 2_000)) {
      const id = bounded.pick(k, notC) as string;
      expect(id).not.toBe("c");
      // Over a and b only: cap = ceil(1.25 × 51 / 2) = 32, so b (50) is full and a takes all.
      expect(id).toBe("a");
    }
    expect(bounded.pick(1, () => false)).toBeNull();
    expect(new BoundedLoad(new HashRing([]), 1.25, () => 0).pick(1)).toBeNull();
  });

  test("the same key and loads give the same pick whatever order the backends are listed in", () => {
    fc.assert(
      fc.property(
        arbIds(2, 10),
        fc.array(fc.nat(20), { minLength: 10, maxLength: 10 }),
        fc.integer(),
        (ids, loads, seed) => {
          const ms = members(ids, [1, 2]);
          const load = new Map(ids.map((id, i) => [id, loads[i] as number]));
          const a = new BoundedLoad(new HashRing(ms), 1.25, (id) => load.get(id) ?? 0);
          const b = new BoundedLoad(new HashRing(shuffled(ms, seed)), 1.25, (id) => load.get(id) ?? 0);
          for (const k of sessionKeyHashes(seed, 300)) expect(b.pick(k)).toBe(a.pick(k));
        },
      ),
      { numRuns: 20 },
    );
  });

  test("a pick is the first eligible backend in the key's preference order that is under its cap", () => {
    fc.assert(
      fc.property(
        arbIds(1, 8),
        fc.array(fc.nat(30), { minLength: 8, maxLength: 8 }),
        fc.constantFrom(1, 1.25, 2),
        fc.integer(),
        (ids, loads, c, seed) => {
          const ms = members(ids, [2, 1, 1, 3]);
          const ring = new HashRing(ms);
          // Some idle backends, so the idle-first-choice shortcut is taken too.
          const load = new Map(
            ids.map((id, i) => [id, (loads[i] as number) % 3 === 0 ? 0 : (loads[i] as number)]),
          );
          const down = new Set(ids.filter((_, i) => (seed >>> (i % 31)) & 1));
          const up = (id: string) => !down.has(id);
          const bounded = new BoundedLoad(ring, c, (id) => load.get(id) ?? 0);
          for (const k of sessionKeyHashes(seed, 200)) {
            const expected = ring
              .preference(k)
              .find((id) => up(id) && (load.get(id) as number) < capOf(ms, load, c, id, up));
            expect(bounded.pick(k, up)).toBe(expected ?? null);
          }
        },
      ),
      { numRuns: 30 },
    );
  });
});
