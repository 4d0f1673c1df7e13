/**
 * "rebalance" on a cookie-insert rule, without sockets: which sessions move
 * when a backend joins, under "balanced" and "persistent", for cookies of
 * today's and yesterday's format, on instances that did and did not serve
 * the older membership.
 */
import { describe, expect, test } from "bun:test";
import type { PersistenceRuleConfig } from "../../src/config/schema.ts";
import { type Member, PersistenceChain } from "../../src/persistence/chain.ts";
import { membershipVersion, Rebalancer } from "../../src/persistence/rebalance.ts";
import { backendKey, TokenSealer } from "../../src/persistence/token.ts";
import type { RequestFacts } from "../../src/persistence/types.ts";

const KEY = Buffer.alloc(32, 9);
const NOW = 1_800_000_000;
const members = (ids: string[]): Member[] =>
  ids.map((id) => ({ id, weight: 1, state: "ready", inflight: 0 }));
const FOUR = ["b1", "b2", "b3", "b4"];
const FIVE = [...FOUR, "b5"];
const facts = (cookie: string | null = null): RequestFacts => ({
  cookie,
  target: "/",
  clientIp: "203.0.113.1",
  headers: new Headers(),
  nowSec: NOW,
});
const rule = (rebalance: "persistent" | "balanced"): PersistenceRuleConfig => ({
  type: "cookie",
  mode: "insert",
  name: "T",
  sameSite: "Lax",
  path: "/",
  partitioned: false,
  refreshAfterMs: 60_000,
  rebalance,
});
const chain = (
  m: Member[],
  rebalance: "persistent" | "balanced",
  previous?: PersistenceChain,
): PersistenceChain =>
  new PersistenceChain(m, {
    pool: "app",
    rules: [rule(rebalance)],
    keys: [KEY],
    hashBalanceFactor: 1.25,
    ...(previous ? { previousMemberships: previous.rebalancer.history } : {}),
  });
const noResponse = { setCookies: [], location: null, cacheControl: null, secure: false };

/** The cookie the chain issues for a placement ("T=..."), or null when it issues none. */
function issued(
  c: PersistenceChain,
  f: RequestFacts,
  placement: NonNullable<ReturnType<PersistenceChain["place"]>>["placement"],
) {
  const sc = c.remember(f, placement, noResponse).find((e) => e.kind === "set-cookie");
  return sc?.kind === "set-cookie" ? (sc.header.split(";")[0] as string) : null;
}

/** N new sessions: their cookies and backends. */
function sessions(c: PersistenceChain, n: number): { cookie: string; backend: string }[] {
  return Array.from({ length: n }, () => {
    const f = facts();
    const placed = c.place(f);
    if (!placed) throw new Error("not placed");
    const cookie = issued(c, f, placed.placement);
    if (cookie === null) throw new Error("no cookie");
    return { cookie, backend: placed.placement.backendId };
  });
}

/** Where each session goes under chain `c`. */
const placeAll = (c: PersistenceChain, s: { cookie: string }[]) =>
  s.map(({ cookie }) => c.place(facts(cookie))?.placement);

const N = 1000;

describe("membership version", () => {
  test("depends on the set of ids only: order and repeats do not change it", () => {
    expect(membershipVersion(["b2", "b1", "b3"])).toBe(membershipVersion(["b1", "b3", "b2", "b1"]));
    expect(membershipVersion(FOUR)).not.toBe(membershipVersion(FIVE));
  });

  test("a joined backend is recognised with or without the older membership in the history", () => {
    const owner = () => null;
    const old = new Rebalancer(FOUR, owner);
    const withHistory = new Rebalancer(FIVE, owner, old.history);
    const fresh = new Rebalancer(FIVE, owner);
    for (const r of [withHistory, fresh]) {
      expect(r.joinedSince("b5", old.version)).toBe(true);
      expect(r.joinedSince("b2", old.version)).toBe(false);
    }
    // Two joined at once: only an instance that served the older membership can tell.
    const six = [...FIVE, "b6"];
    expect(new Rebalancer(six, owner, old.history).joinedSince("b6", old.version)).toBe(true);
    expect(new Rebalancer(six, owner).joinedSince("b6", old.version)).toBe(false);
  });
});

describe('"rebalance": "balanced"', () => {
  test("a fifth backend takes about a fifth of the sessions, all of them its key's, and no session moves elsewhere", () => {
    const four = chain(members(FOUR), "balanced");
    const s = sessions(four, N);
    for (const fresh of [false, true]) {
      const five = chain(members(FIVE), "balanced", fresh ? undefined : four);
      const after = placeAll(five, s);
      let moved = 0;
      after.forEach((p, i) => {
        const before = (s[i] as { backend: string }).backend;
        if (p?.backendId === before) {
          expect(p.outcome).toBe("hit");
          return;
        }
        moved++;
        expect(p).toMatchObject({ backendId: "b5", outcome: "repinned", rebalanced: true });
      });
      // Binomial(1000, 1/5): mean 200, sd ~12.6; the ring's share for b5 is within a few percent of 1/5.
      expect(moved).toBeGreaterThan(140);
      expect(moved).toBeLessThan(260);
    }
  });

  test("a moved session gets a cookie naming its new backend under the new membership, and then stays", () => {
    const four = chain(members(FOUR), "balanced");
    const five = chain(members(FIVE), "balanced", four);
    const s = sessions(four, 200);
    let checked = 0;
    for (const { cookie, backend } of s) {
      const f = facts(cookie);
      const p = five.place(f)?.placement;
      if (!p) throw new Error("not placed");
      const again = issued(five, f, p);
      // Moved or not, the cookie is re-issued under the new membership.
      expect(again).not.toBeNull();
      const next = five.place(facts(again))?.placement;
      expect(next).toMatchObject({ backendId: p.backendId, outcome: "hit" });
      if (p.backendId !== backend) checked++;
    }
    expect(checked).toBeGreaterThan(0);
  });

  test("sessions bounded loads placed off their ring owner stay put while the membership is unchanged", () => {
    const m = members(FOUR);
    // b1 is busy while the sessions begin: bounded loads send its keys elsewhere.
    (m[0] as Member).inflight = 50;
    const c = chain(m, "balanced");
    const s = sessions(c, 400);
    expect(s.some((x) => x.backend === "b1")).toBe(false);
    (m[0] as Member).inflight = 0;
    // A reload with the same backends (new weights do not change the membership either).
    const reloaded = chain(
      members(FOUR).map((x) => ({ ...x, weight: x.id === "b1" ? 3 : 1 })),
      "balanced",
      c,
    );
    expect(placeAll(reloaded, s).map((p) => p?.backendId)).toEqual(s.map((x) => x.backend));
  });

  test("a joined backend that cannot take new sessions leaves every session where it is", () => {
    const four = chain(members(FOUR), "balanced");
    const s = sessions(four, 300);
    const m = members(FIVE);
    (m[4] as Member).state = "maint";
    const after = placeAll(chain(m, "balanced", four), s);
    expect(after.map((p) => p?.backendId)).toEqual(s.map((x) => x.backend));
  });

  test("a cookie without a membership version (issued before it existed) stays where it is", () => {
    const sealer = new TokenSealer([KEY], "app", "T");
    const five = chain(members(FIVE), "balanced");
    for (let i = 0; i < 200; i++) {
      const backend = FOUR[i % 4] as string;
      const token = sealer.seal({
        sessionKey: crypto.getRandomValues(new Uint8Array(16)),
        backendKey: backendKey(backend),
        issuedAt: NOW - 10,
        lastSeen: NOW - 10,
      });
      expect(token).toHaveLength(87);
      expect(five.place(facts(`T=${token}`))?.placement).toMatchObject({
        backendId: backend,
        outcome: "hit",
      });
    }
  });
});

describe('"rebalance": "persistent" (the default)', () => {
  test("a joined backend moves no session, and cookies keep today's format", () => {
    const four = chain(members(FOUR), "persistent");
    const s = sessions(four, 500);
    for (const { cookie } of s) expect(cookie.length).toBe("T=".length + 87);
    const after = placeAll(chain(members(FIVE), "persistent", four), s);
    expect(after.map((p) => p?.backendId)).toEqual(s.map((x) => x.backend));
    expect(after.every((p) => p?.outcome === "hit")).toBe(true);
  });

  test("a balanced cookie read by a persistent rule stays where it is", () => {
    const four = chain(members(FOUR), "balanced");
    const s = sessions(four, 300);
    const after = placeAll(chain(members(FIVE), "persistent", four), s);
    expect(after.map((p) => p?.backendId)).toEqual(s.map((x) => x.backend));
  });
});
