import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import fc from "fast-check";
import { memberSeed, mix, unitOf } from "../../src/ring/hash.ts";
import { HashRing, hashKey, type RingMember } from "../../src/ring/index.ts";
import {
  arbIds,
  FINGERPRINT_MEMBERS,
  mappingFingerprint,
  sessionKeyHashes,
  sessionKeyText,
  shuffled,
  tally,
} from "./support.ts";

const KEYS = 100_000;
const members = (ids: readonly string[], weights: readonly number[]): RingMember[] =>
  ids.map((id, i) => ({ id, weight: weights[i % weights.length] as number }));

/**
 * The definition the ring must implement, written the slow and obvious way:
 * score = ln(u) / weight (Schindelhauer & Schomaker), the highest eligible
 * score wins, equal scores go to the heavier member, then the lower id.
 */
function referenceLookup(
  ms: readonly RingMember[],
  k: number,
  eligible: (id: string) => boolean = () => true,
) {
  let best: { id: string; weight: number; score: number } | null = null;
  for (const m of ms) {
    if (m.weight <= 0 || !eligible(m.id)) continue;
    const score = Math.log(unitOf(mix(k, memberSeed(m.id)))) * (1 / m.weight);
    const wins =
      best === null ||
      score > best.score ||
      (score === best.score && (m.weight > best.weight || (m.weight === best.weight && m.id < best.id)));
    if (wins) best = { id: m.id, weight: m.weight, score };
  }
  return best?.id ?? null;
}

test("sessionKeyHashes (the tests' key generator) equals hashKey of the key text", () => {
  const hashes = sessionKeyHashes(42, 5);
  for (let i = 0; i < 5; i++) expect(hashes[i]).toBe(hashKey(sessionKeyText(42, i)));
});

describe("construction", () => {
  test("an empty ring, or one whose members all weigh 0, places nothing", () => {
    expect(new HashRing([]).lookup(hashKey("k"))).toBeNull();
    const zero = new HashRing([
      { id: "a", weight: 0 },
      { id: "b", weight: 0 },
    ]);
    expect(zero.size).toBe(0);
    expect(zero.lookup(hashKey("k"))).toBeNull();
    expect(zero.preference(hashKey("k"))).toEqual([]);
  });

  test.each([
    [
      "a duplicate id",
      [
        { id: "a", weight: 1 },
        { id: "a", weight: 2 },
      ],
      /duplicate backend id "a"/,
    ],
    ["a negative weight", [{ id: "a", weight: -1 }], /weight -1/],
    ["a NaN weight", [{ id: "a", weight: Number.NaN }], /weight NaN/],
    ["an infinite weight", [{ id: "a", weight: Number.POSITIVE_INFINITY }], /weight Infinity/],
  ])("throws on %s", (_what, ms, message) => {
    expect(() => new HashRing(ms)).toThrow(message);
  });

  test("two ids with the same seed: the later one is refused with its reason, not a crash", () => {
    // Found by search: these two ids have the same 32-bit seed, so one could never win a key.
    expect(memberSeed("app-3426")).toBe(memberSeed("app-13129"));
    const ring = new HashRing([
      { id: "app-3426", weight: 1 },
      { id: "app-13129", weight: 1 },
      { id: "app-2", weight: 1 },
    ]);
    expect(ring.refused).toEqual([
      { id: "app-3426", reason: `its ring seed equals backend "app-13129"'s; rename one` },
    ]);
    expect(ring.members.map((m) => m.id)).toEqual(["app-13129", "app-2"]);
    const owners = new Set<string | null>();
    for (let k = 0; k < 2000; k++) owners.add(ring.lookup((k * 2654435761) >>> 0));
    expect([...owners].sort()).toEqual(["app-13129", "app-2"]);
  });

  test("a colliding pair is accepted when one of them weighs 0 (it never competes)", () => {
    expect(memberSeed("app-3426")).toBe(memberSeed("app-13129"));
    const ring = new HashRing([
      { id: "app-3426", weight: 1 },
      { id: "app-13129", weight: 0 },
    ]);
    expect(ring.lookup(1)).toBe("app-3426");
  });

  test("members are listed in canonical order: weight descending, then id", () => {
    const ring = new HashRing(members(["c", "b", "a", "d", "z"], [1, 2, 1, 2, 0]));
    expect(ring.members.map((m) => m.id)).toEqual(["b", "d", "a", "c"]);
  });
});

describe("determinism", () => {
  test("the mapping depends on ids and weights only, not on the order backends are listed", () => {
    fc.assert(
      fc.property(
        arbIds(1, 12),
        fc.array(fc.integer({ min: 0, max: 5 }), { minLength: 1, maxLength: 12 }),
        fc.integer(),
        (ids, weights, seed) => {
          const ms = members(ids, weights);
          const a = new HashRing(ms);
          const b = new HashRing(shuffled(ms, seed));
          for (const k of sessionKeyHashes(seed, 500)) {
            expect(b.lookup(k)).toBe(a.lookup(k));
            expect(b.preference(k)).toEqual(a.preference(k));
          }
        },
      ),
      { numRuns: 30 },
    );
  });

  test("another bun process, given the backends in another order, computes the same mapping", () => {
    const child = Bun.spawnSync([process.execPath, join(import.meta.dir, "fingerprint.ts")], {
      stdout: "pipe",
      stderr: "pipe",
    });
    expect(child.stderr.toString()).toBe("");
    expect(child.exitCode).toBe(0);
    expect(child.stdout.toString().trim()).toBe(mappingFingerprint(FINGERPRINT_MEMBERS));
  });

  test("the mapping fingerprint is pinned (a change here re-places every session)", () => {
    expect(mappingFingerprint(FINGERPRINT_MEMBERS)).toBe("a0952b023a215284");
  });

  const equal = new HashRing(members(["app-1", "app-2", "app-3"], [1]));
  const weighted = new HashRing(members(["a", "b", "c", "d"], [2, 1, 1, 5]));
  test.each([
    ["3f2a9c0d8e7b6a5f4e3d2c1b0a998877", "app-1,app-3,app-2", "b,d,c,a"],
    ["0123456789abcdef0123456789abcdef", "app-2,app-1,app-3", "c,a,d,b"],
    ["203.0.113.7", "app-2,app-3,app-1", "d,a,c,b"],
    ["2001:db8::1", "app-1,app-2,app-3", "d,c,a,b"],
    ["user-42", "app-3,app-1,app-2", "d,b,c,a"],
    ["ffffffffffffffffffffffffffffffff", "app-2,app-3,app-1", "a,b,d,c"],
  ])("key %s keeps its pinned preference orders", (key, equalOrder, weightedOrder) => {
    const k = hashKey(key);
    expect(equal.preference(k).join(",")).toBe(equalOrder);
    expect(equal.lookup(k)).toBe(equalOrder.split(",")[0] as string);
    expect(weighted.preference(k).join(",")).toBe(weightedOrder);
    expect(weighted.lookup(k)).toBe(weightedOrder.split(",")[0] as string);
  });
});

describe("agreement with the definition", () => {
  test("lookup equals the reference arg-max of ln(u) / weight, with and without eligibility", () => {
    fc.assert(
      fc.property(
        arbIds(1, 24),
        fc.array(fc.oneof(fc.integer({ min: 0, max: 4 }), fc.double({ min: 0.01, max: 1000, noNaN: true })), {
          minLength: 1,
          maxLength: 24,
        }),
        fc.integer(),
        (ids, weights, seed) => {
          const ms = members(ids, weights);
          const ring = new HashRing(ms);
          const down = new Set(ids.filter((_, i) => (seed >>> (i % 31)) & 1));
          const up = (id: string) => !down.has(id);
          for (const k of sessionKeyHashes(seed, 300)) {
            expect(ring.lookup(k)).toBe(referenceLookup(ms, k));
            expect(ring.lookup(k, up)).toBe(referenceLookup(ms, k, up));
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  test("a member whose hash for the key is the lowest possible still wins when it is the only candidate", () => {
    const ms = members(["a", "b", "c", "d"], [3, 1, 2, 1]);
    const ring = new HashRing(ms);
    for (const m of ms) {
      const k = memberSeed(m.id) >>> 0; // mix(k, seed) is then the minimum
      expect(mix(k, memberSeed(m.id))).toBe(-(2 ** 31));
      expect(ring.lookup(k, (id) => id === m.id)).toBe(m.id);
      expect(ring.lookup(k)).toBe(referenceLookup(ms, k));
    }
    expect(new HashRing([{ id: "solo", weight: 1 }]).lookup(memberSeed("solo") >>> 0)).toBe("solo");
  });
});

describe("weights are honoured within ±5% over 100k keys", () => {
  test.each([
    ["1:3", [1, 3]],
    ["1:1:1", [1, 1, 1]],
    ["2:1:1:5", [2, 1, 1, 5]],
    ["1:1:1:1:1:1:1:1:1:1", [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]],
    ["7:5:3:2 (no two alike)", [7, 5, 3, 2]],
  ])("weights %s, random ids", (_name, weights) => {
    fc.assert(
      fc.property(arbIds(weights.length, weights.length), fc.integer(), (ids, seed) => {
        const ring = new HashRing(members(ids, weights));
        const counts = tally(ring, sessionKeyHashes(seed, KEYS));
        const total = weights.reduce((a, b) => a + b, 0);
        ids.forEach((id, i) => {
          const ideal = (KEYS * (weights[i] as number)) / total;
          const ratio = (counts.get(id) ?? 0) / ideal;
          if (Math.abs(ratio - 1) > 0.05) {
            throw new Error(
              `${JSON.stringify(id)} got ${counts.get(id) ?? 0} keys, ideal ${ideal.toFixed(0)}`,
            );
          }
        });
      }),
      { numRuns: 8 },
    );
  });

  test("a weight-0 member never receives a key, and is not in any preference order", () => {
    const ring = new HashRing(members(["a", "b", "off"], [1, 1, 0]));
    const keys = sessionKeyHashes(7, 20_000);
    expect(tally(ring, keys).has("off")).toBe(false);
    expect(ring.preference(keys[0] as number)).not.toContain("off");
  });
});

describe("adding or removing one backend", () => {
  const arbChange = fc.record({
    ids: arbIds(2, 10),
    weights: fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 10, maxLength: 10 }),
    which: fc.nat(),
    seed: fc.integer(),
  });

  test("removing one moves only its own keys, at most 1.1 times its ideal share", () => {
    fc.assert(
      fc.property(arbChange, ({ ids, weights, which, seed }) => {
        const ms = members(ids, weights);
        const gone = ms[which % ms.length] as RingMember;
        const before = new HashRing(ms);
        const after = new HashRing(ms.filter((m) => m !== gone));
        const ideal = gone.weight / ms.reduce((a, m) => a + m.weight, 0);
        let moved = 0;
        for (const k of sessionKeyHashes(seed, KEYS)) {
          const was = before.lookup(k);
          const now = after.lookup(k);
          if (was === now) continue;
          moved++;
          if (was !== gone.id) throw new Error(`key moved from ${was} to ${now}, both of which stayed`);
        }
        expect(moved / KEYS).toBeLessThanOrEqual(1.1 * ideal);
      }),
      { numRuns: 10 },
    );
  });

  test("adding one moves keys only onto it, at most 1.1 times its ideal share", () => {
    fc.assert(
      fc.property(arbChange, ({ ids, weights, which, seed }) => {
        const ms = members(ids, weights);
        const added = ms[which % ms.length] as RingMember;
        const before = new HashRing(ms.filter((m) => m !== added));
        const after = new HashRing(ms);
        const ideal = added.weight / ms.reduce((a, m) => a + m.weight, 0);
        let moved = 0;
        for (const k of sessionKeyHashes(seed, KEYS)) {
          const was = before.lookup(k);
          const now = after.lookup(k);
          if (was === now) continue;
          moved++;
          if (now !== added.id) throw new Error(`key moved from ${was} to ${now}, both of which stayed`);
        }
        expect(moved / KEYS).toBeLessThanOrEqual(1.1 * ideal);
      }),
      { numRuns: 10 },
    );
  });

  test("changing one backend's weight moves keys only to or from it", () => {
    fc.assert(
      fc.property(arbChange, fc.integer({ min: 1, max: 6 }), ({ ids, weights, which, seed }, newWeight) => {
        const ms = members(ids, weights);
        const changed = ms[which % ms.length] as RingMember;
        const before = new HashRing(ms);
        const after = new HashRing(ms.map((m) => (m === changed ? { id: m.id, weight: newWeight } : m)));
        for (const k of sessionKeyHashes(seed, 20_000)) {
          const was = before.lookup(k);
          const now = after.lookup(k);
          if (was !== now && was !== changed.id && now !== changed.id) {
            throw new Error(`key moved from ${was} to ${now}, neither of which changed`);
          }
        }
      }),
      { numRuns: 10 },
    );
  });
});

describe("eligibility and preference order", () => {
  test("lookup with eligibility returns the first eligible id of preference(), the same as a ring without the ineligible ones", () => {
    fc.assert(
      fc.property(
        arbIds(1, 12),
        fc.array(fc.integer({ min: 0, max: 4 }), { minLength: 1, maxLength: 12 }),
        fc.integer(),
        (ids, weights, seed) => {
          const ms = members(ids, weights);
          const ring = new HashRing(ms);
          const down = new Set(ids.filter((_, i) => (seed >>> (i % 31)) & 1));
          const up = (id: string) => !down.has(id);
          const without = new HashRing(ms.filter((m) => up(m.id)));
          for (const k of sessionKeyHashes(seed, 500)) {
            const order = ring.preference(k);
            expect(order[0] ?? null).toBe(ring.lookup(k));
            expect(ring.lookup(k, up)).toBe(order.find(up) ?? null);
            expect(ring.lookup(k, up)).toBe(without.lookup(k));
          }
        },
      ),
      { numRuns: 50 },
    );
  });

  test("lookupIndex returns the index in members of what lookup returns", () => {
    const ms = members(["a", "b", "c", "d", "e"], [1, 2, 2, 3, 1]);
    const ring = new HashRing(ms);
    const notB = (i: number) => ring.members[i]?.id !== "b";
    for (const k of sessionKeyHashes(5, 500)) {
      expect(ring.members[ring.lookupIndex(k)]?.id).toBe(ring.lookup(k) as string);
      expect(ring.members[ring.lookupIndex(k, notB)]?.id).toBe(ring.lookup(k, (id) => id !== "b") as string);
    }
    expect(ring.lookupIndex(1, () => false)).toBe(-1);
  });

  test("preference() lists every weighted member exactly once", () => {
    const ms = members(["a", "b", "c", "d", "e", "off"], [1, 2, 2, 3, 1, 0]);
    const ring = new HashRing(ms);
    for (const k of sessionKeyHashes(3, 200)) {
      expect([...ring.preference(k)].sort()).toEqual(["a", "b", "c", "d", "e"]);
    }
  });

  test("the keys of a backend that goes down spread over the others in proportion to weight (±10%)", () => {
    fc.assert(
      fc.property(arbIds(4, 4), fc.integer(), (ids, seed) => {
        const weights = [1, 1, 2, 4];
        const ring = new HashRing(members(ids, weights));
        const down = ids[3] as string;
        const moved = new Map<string, number>();
        let total = 0;
        for (const k of sessionKeyHashes(seed, KEYS)) {
          if (ring.lookup(k) !== down) continue;
          const next = ring.lookup(k, (id) => id !== down) as string;
          moved.set(next, (moved.get(next) ?? 0) + 1);
          total++;
        }
        ids.slice(0, 3).forEach((id, i) => {
          const ideal = (total * (weights[i] as number)) / 4;
          expect(Math.abs((moved.get(id) ?? 0) / ideal - 1)).toBeLessThanOrEqual(0.1);
        });
      }),
      { numRuns: 5 },
    );
  });

  test("no eligible member gives null", () => {
    const ring = new HashRing(members(["a", "b"], [1]));
    expect(ring.lookup(hashKey("k"), () => false)).toBeNull();
  });

  test("eligible is asked about few members, not all of them", () => {
    const ring = new HashRing(
      members(
        [...Array(50).keys()].map((i) => `app-${i}`),
        [1],
      ),
    );
    let calls = 0;
    for (const k of sessionKeyHashes(11, 1_000)) {
      ring.lookup(k, () => {
        calls++;
        return true;
      });
    }
    // About H(50) = 4.5 record-breakers per key.
    expect(calls / 1_000).toBeLessThan(8);
  });
});
