/**
 * The stick table: what it keeps, for how long, and what an entry from
 * elsewhere (another thread, a snapshot, Redis, a peer) may change.
 */
import { describe, expect, test } from "bun:test";
import { StickTable } from "../../src/persistence/stick-table.ts";

const KEY = Buffer.alloc(32, 4);
const NOW = 1_800_000_000;
const LIFE_SEC = 60;
const table = (maxEntries = 100) => new StickTable(KEY, LIFE_SEC * 1000, maxEntries);

describe("entries learned elsewhere", () => {
  const hostile: { why: string; expiresAtSec: number }[] = [
    { why: "just above 2^41 seconds", expiresAtSec: 2 ** 41 + 1 },
    { why: "2^42 + 1 seconds", expiresAtSec: 2 ** 42 + 1 },
    { why: "2^60 seconds", expiresAtSec: 2 ** 60 },
    { why: "the largest safe integer", expiresAtSec: Number.MAX_SAFE_INTEGER },
    { why: "a fraction", expiresAtSec: NOW + 30.75 },
  ];
  for (const row of hostile) {
    test(`an expiry of ${row.why} cannot change which backend an entry resolves to`, () => {
      const t = table();
      // b1 and b2 are interned first, so a packed index that lost precision would name one of them.
      t.set("a", "b1", NOW);
      t.set("b", "b2", NOW);
      const key = t.keyOf("victim");
      t.putHashed(key, "b4", row.expiresAtSec, NOW);
      const e = t.peekHashed(key, NOW);
      expect(e?.backendId).toBe("b4");
      expect(t.get("victim", NOW + 1)?.backendId).toBe("b4");
    });
  }

  test("an entry from elsewhere lives no longer than this table's own expiry from now", () => {
    const t = table();
    const key = t.keyOf("s");
    t.putHashed(key, "b1", NOW + 10 * LIFE_SEC, NOW);
    expect(t.peekHashed(key, NOW)?.expiresAtSec).toBe(NOW + LIFE_SEC);
    expect(t.peekHashed(key, NOW + LIFE_SEC)).toBeNull();
  });

  test("an entry from elsewhere keeps a shorter expiry it arrives with", () => {
    const t = table();
    const key = t.keyOf("s");
    t.putHashed(key, "b1", NOW + 5, NOW);
    expect(t.peekHashed(key, NOW)).toEqual({ backendId: "b1", expiresAtSec: NOW + 5 });
  });

  const skipped: { why: string; expiresAtSec: number }[] = [
    { why: "already expired", expiresAtSec: NOW },
    { why: "expiring within this second", expiresAtSec: NOW + 0.5 },
    { why: "not a number", expiresAtSec: Number.NaN },
    { why: "infinite", expiresAtSec: Number.POSITIVE_INFINITY },
  ];
  for (const row of skipped) {
    test(`an entry ${row.why} is not stored`, () => {
      const t = table();
      t.putHashed(t.keyOf("s"), "b1", row.expiresAtSec, NOW);
      expect(t.size).toBe(0);
    });
  }
});

describe("misses elsewhere", () => {
  test("a key looked up in vain is not asked for again for a few seconds, then it is", () => {
    const t = table();
    const key = t.keyOf("unknown");
    expect(t.missedRecently(key, NOW)).toBe(false);
    t.noteMiss(key, NOW);
    expect(t.missedRecently(key, NOW)).toBe(true);
    expect(t.missedRecently(key, NOW + 9)).toBe(true);
    expect(t.missedRecently(key, NOW + 10)).toBe(false);
  });

  test("an entry that arrives for a missed key ends the miss", () => {
    const t = table();
    const key = t.keyOf("late");
    t.noteMiss(key, NOW);
    t.putHashed(key, "b1", NOW + 30, NOW);
    expect(t.missedRecently(key, NOW)).toBe(false);
  });

  test("misses are bounded: past 4096 the oldest is forgotten, and learned entries are untouched", () => {
    const t = table(10);
    t.set("learned", "b1", NOW);
    const keys = Array.from({ length: 5000 }, (_, i) => t.keyOf(`made-up-${i}`));
    for (const k of keys) t.noteMiss(k, NOW);
    expect(t.missedRecently(keys[0] as number, NOW)).toBe(false);
    expect(t.missedRecently(keys[4999] as number, NOW)).toBe(true);
    expect(t.get("learned", NOW)?.backendId).toBe("b1");
  });
});

describe("backends that come and go", () => {
  test("after 10,000 distinct backend ids every live entry still names its own backend", () => {
    // Pod-IP churn: each backend lives a while, learns sessions, and is replaced by a new id.
    const t = table(2_000);
    for (let b = 0; b < 10_000; b++) {
      for (let s = 0; s < 3; s++) t.set(`session-${b}-${s}`, `10.0.${b}:8080`, NOW);
    }
    let live = 0;
    for (const [key, backendId] of t.entries(NOW)) {
      live++;
      const expected = [...Array(3).keys()]
        .map((s) => t.keyOf(`session-${backendId.slice(5, -5)}-${s}`))
        .includes(key);
      expect(expected).toBe(true);
    }
    expect(live).toBe(2_000);
    expect(t.get("session-9999-2", NOW)?.backendId).toBe("10.0.9999:8080");
    expect(t.get("session-9400-0", NOW)?.backendId).toBe("10.0.9400:8080");
  });

  test("an entry moved to another backend or evicted frees its backend's slot for reuse", () => {
    const t = table(10);
    // 5,000 backends, one session each, in a table of 10: only the last 10 backends are referenced.
    for (let b = 0; b < 5_000; b++) t.set(`s${b}`, `pod-${b}`, NOW);
    for (let b = 4_990; b < 5_000; b++)
      expect(t.peekHashed(t.keyOf(`s${b}`), NOW)?.backendId).toBe(`pod-${b}`);
    t.set("s4999", "pod-new", NOW);
    expect(t.get("s4999", NOW)?.backendId).toBe("pod-new");
    expect(t.get("s4998", NOW)?.backendId).toBe("pod-4998");
  });
});
