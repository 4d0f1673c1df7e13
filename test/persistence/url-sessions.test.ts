/**
 * URL session IDs: what the table learns, and what a client sending made-up
 * IDs can and cannot change. Through a real PersistenceChain, without sockets.
 */
import { describe, expect, test } from "bun:test";
import type { PersistenceRuleConfig } from "../../src/config/schema.ts";
import { type Member, PersistenceChain } from "../../src/persistence/chain.ts";
import type { RequestFacts, ResponseFacts } from "../../src/persistence/types.ts";

const KEY = Buffer.alloc(32, 6);
const NOW = 1_800_000_000;
const URL_RULE: PersistenceRuleConfig = { type: "url", param: "sid", expireMs: 3_600_000, maxEntries: 1000 };

const members = (): Member[] =>
  ["b1", "b2", "b3", "b4"].map((id) => ({ id, weight: 1, state: "ready" as const, inflight: 0 }));
const chainOf = (m: Member[]) =>
  new PersistenceChain(m, { pool: "app", rules: [URL_RULE], keys: [KEY], hashBalanceFactor: 1.25 });
const facts = (target: string, nowSec = NOW): RequestFacts => ({
  cookie: null,
  target,
  clientIp: "203.0.113.1",
  headers: new Headers(),
  nowSec,
});
const answer = (over: Partial<ResponseFacts> = {}): ResponseFacts => ({
  setCookies: [],
  location: null,
  cacheControl: null,
  secure: false,
  ...over,
});

/** One request through the chain: placed, answered with `res`, remembered. Returns the backend. */
function request(c: PersistenceChain, target: string, res = answer(), nowSec = NOW): string {
  const f = facts(target, nowSec);
  const placed = c.place(f);
  if (!placed) throw new Error(`${target}: not placed`);
  c.remember(f, placed.placement, res);
  return placed.placement.backendId;
}

/**
 * Sessions a backend issued with Set-Cookie on a client's first request, each
 * on a backend other than the one the ring would pick for its ID: reaching
 * the owner afterwards proves the learned entry, not the hash, placed it.
 */
function learnSessions(c: PersistenceChain, count: number): { sid: string; owner: string }[] {
  const out: { sid: string; owner: string }[] = [];
  for (let i = 0; out.length < count; i++) {
    const sid = `issued-${i}`;
    const byHash = c.place(facts(`/?sid=${sid}`))?.placement.backendId;
    const first = facts("/login");
    const placed = c.place(first);
    if (!placed || placed.placement.backendId === byHash) continue;
    c.remember(first, placed.placement, answer({ setCookies: [`sid=${sid}; Path=/`] }));
    out.push({ sid, owner: placed.placement.backendId });
  }
  return out;
}

describe("url rule: learned sessions and made-up IDs", () => {
  test("with maxEntries 1000, five learned sessions still reach their owners after 50,000 random ids", () => {
    const c = chainOf(members());
    const learned = learnSessions(c, 5);
    for (const s of learned) expect(request(c, `/cart?sid=${s.sid}`)).toBe(s.owner);
    for (let i = 0; i < 50_000; i++) request(c, `/cart?sid=${crypto.randomUUID()}`);
    for (const s of learned) {
      const placed = c.place(facts(`/cart?sid=${s.sid}`))?.placement;
      expect({ sid: s.sid, ...placed }).toMatchObject({ sid: s.sid, backendId: s.owner, outcome: "hit" });
    }
  });

  test("an ID only a client sent is placed by the ring and not stored", () => {
    const c = chainOf(members());
    const table = [...c.tables.values()][0];
    const home = request(c, "/?sid=made-up");
    expect(table?.size).toBe(0);
    expect(request(c, "/?sid=made-up")).toBe(home);
  });

  test("an ID just looked up elsewhere in vain is not looked up again; a learned one needs no lookup", () => {
    const c = chainOf(members());
    const [table] = c.tables.keys();
    const f = facts("/?sid=unknown");
    const missing = c.missingKeys(f);
    expect(missing).toEqual([
      { table: table as string, key: c.tables.get(table as string)?.keyOf("unknown") as number },
    ]);
    c.tables.get(table as string)?.noteMiss((missing[0] as { key: number }).key, NOW);
    expect(c.missingKeys(f)).toEqual([]);
    const [s] = learnSessions(c, 1);
    expect(c.missingKeys(facts(`/?sid=${s?.sid}`))).toEqual([]);
  });

  test("IDs in a backend's Set-Cookie and Location are learned", () => {
    const c = chainOf(members());
    const table = [...c.tables.values()][0];
    request(c, "/", answer({ setCookies: ["sid=from-cookie; Path=/"] }));
    request(c, "/", answer({ location: "https://shop.example/next?sid=from-location" }));
    expect(table?.size).toBe(2);
  });

  test("a learned session re-pinned after its backend fails is learned where it now lives", () => {
    const m = members();
    const c = chainOf(m);
    const [s] = learnSessions(c, 1);
    if (!s) throw new Error("no session");
    const owner = m.find((x) => x.id === s.owner) as Member;
    owner.down = true;
    const moved = c.place(facts(`/?sid=${s.sid}`))?.placement;
    expect(moved?.outcome).toBe("repinned");
    request(c, `/?sid=${s.sid}`);
    owner.down = false;
    // Back up, the owner does not get the session back: it stays where it was re-pinned.
    expect(c.place(facts(`/?sid=${s.sid}`))?.placement).toMatchObject({
      backendId: moved?.backendId,
      outcome: "hit",
    });
  });
});
