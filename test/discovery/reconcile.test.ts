/**
 * DNS discovery's decisions: an answer reconciled with the discovered set.
 */
import { describe, expect, test } from "bun:test";
import {
  type DnsRecord,
  discoveredId,
  discoveredUrl,
  type Held,
  nextLookupMs,
  reconcile,
} from "../../src/discovery/reconcile.ts";

const rec = (n: number, extra: Partial<DnsRecord> = {}): DnsRecord => ({
  id: `10.0.0.${n}_80`,
  url: `http://10.0.0.${n}:80`,
  weight: 1,
  priority: 0,
  ...extra,
});
const held = (...entries: [DnsRecord, number][]) =>
  new Map<string, Held>(entries.map(([r, missing]) => [r.id, { record: r, missing }]));
const base = { holdCount: 3, maxBackends: 10 };

describe("reconcile", () => {
  test("a failed lookup or an empty answer changes nothing", () => {
    const current = held([rec(1), 0], [rec(2), 1]);
    for (const answer of [null, []]) {
      const r = reconcile({ ...base, current, answer });
      expect(r.outcome).toBe(answer === null ? "failed" : "empty");
      expect(r.upsert).toEqual([]);
      expect(r.remove).toEqual([]);
      expect([...r.next.values()]).toEqual([...current.values()]);
    }
  });

  test("new records are added; a known record is not re-added", () => {
    const r = reconcile({ ...base, current: held([rec(1), 0]), answer: [rec(1), rec(2)] });
    expect(r.upsert.map((x) => x.id)).toEqual(["10.0.0.2_80"]);
    expect([...r.next.keys()].sort()).toEqual(["10.0.0.1_80", "10.0.0.2_80"]);
  });

  test("a changed weight or address updates the record under the same id", () => {
    const r = reconcile({ ...base, current: held([rec(1), 0]), answer: [rec(1, { weight: 7 })] });
    expect(r.upsert).toEqual([rec(1, { weight: 7 })]);
  });

  test.each([
    ["missing once of three: held", 0, [], ["10.0.0.1_80", "10.0.0.2_80"]],
    ["missing the second time of three: held", 1, [], ["10.0.0.1_80", "10.0.0.2_80"]],
    ["missing the third time of three: removed", 2, ["10.0.0.2_80"], ["10.0.0.1_80"]],
  ] as const)("hold period: %s", (_what, missingBefore, removed, kept) => {
    const r = reconcile({ ...base, current: held([rec(1), 0], [rec(2), missingBefore]), answer: [rec(1)] });
    expect(r.remove).toEqual([...removed]);
    expect([...r.next.keys()].sort()).toEqual([...kept]);
  });

  test("a record that comes back within the hold resets its count", () => {
    const r = reconcile({ ...base, current: held([rec(1), 2]), answer: [rec(1)] });
    expect(r.next.get("10.0.0.1_80")?.missing).toBe(0);
    expect(r.upsert).toEqual([]);
  });

  test("the cap keeps backends in the pool first, then new records in id order", () => {
    const answer = [rec(9), rec(3), rec(1), rec(5)];
    const r = reconcile({ ...base, maxBackends: 3, current: held([rec(9), 0]), answer });
    expect([...r.next.keys()].sort()).toEqual(["10.0.0.1_80", "10.0.0.3_80", "10.0.0.9_80"]);
    expect(r.capped).toBe(1);
  });

  test("SRV: only the best priority is used while any of it is not down", () => {
    const answer = [rec(1, { priority: 10 }), rec(2, { priority: 10 }), rec(3, { priority: 20 })];
    const up = reconcile({ ...base, current: new Map(), answer, isDown: () => false });
    expect(up.upsert.map((x) => x.id)).toEqual(["10.0.0.1_80", "10.0.0.2_80"]);
    const oneDown = reconcile({ ...base, current: new Map(), answer, isDown: (id) => id === "10.0.0.1_80" });
    expect(oneDown.upsert.map((x) => x.id)).toEqual(["10.0.0.1_80", "10.0.0.2_80"]);
    const allDown = reconcile({ ...base, current: new Map(), answer, isDown: (id) => id !== "10.0.0.3_80" });
    expect(allDown.upsert.map((x) => x.id)).toEqual(["10.0.0.3_80"]);
  });
});

describe("ids, URLs and timing", () => {
  test.each([
    ["IPv4", "10.0.0.1", 8080, "10.0.0.1_8080"],
    ["IPv6: colons become dashes", "fd00::1", 8080, "fd00--1_8080"],
    ["an SRV target, trailing dot and case dropped", "App-1.Svc.Local.", 80, "app-1.svc.local_80"],
  ])("discoveredId: %s", (_what, host, port, id) => {
    expect(discoveredId(host, port)).toBe(id);
  });

  test("a name too long for an id keeps a valid, stable, distinct id", () => {
    const long = `${"a".repeat(60)}.example.internal`;
    const id = discoveredId(long, 80);
    expect(id.length).toBeLessThanOrEqual(63);
    expect(id).toMatch(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/);
    expect(discoveredId(long, 80)).toBe(id);
    expect(discoveredId(`${long}x`, 80)).not.toBe(id);
  });

  test("discoveredUrl brackets IPv6", () => {
    expect(discoveredUrl("http", "fd00::1", 80)).toBe("http://[fd00::1]:80");
    expect(discoveredUrl("tcp", "10.0.0.1", 443)).toBe("tcp://10.0.0.1:443");
  });

  test.each([
    ["no TTL: the interval", 5_000, undefined, 5_000],
    ["a TTL below the interval: the interval is the floor", 5_000, 1, 5_000],
    ["a TTL above the interval is honoured", 5_000, 30, 30_000],
  ])("nextLookupMs: %s", (_what, interval, ttl, ms) => {
    expect(nextLookupMs(interval, ttl)).toBe(ms);
  });
});
