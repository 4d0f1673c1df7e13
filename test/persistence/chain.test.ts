/**
 * The chain: precedence, failover and draining, without sockets.
 */
import { describe, expect, test } from "bun:test";
import type { PersistenceRuleConfig } from "../../src/config/schema.ts";
import { type Member, PersistenceChain } from "../../src/persistence/chain.ts";
import type { RequestFacts } from "../../src/persistence/types.ts";

const KEY = Buffer.alloc(32, 5);
const members = (): Member[] =>
  ["b1", "b2", "b3", "b4"].map((id) => ({ id, weight: 1, state: "ready" as const, inflight: 0 }));
const facts = (over: Partial<RequestFacts> = {}): RequestFacts => ({
  cookie: null,
  target: "/",
  clientIp: "203.0.113.1",
  headers: new Headers(),
  nowSec: 1_800_000_000,
  ...over,
});
const insert: PersistenceRuleConfig = {
  type: "cookie",
  mode: "insert",
  name: "T",
  sameSite: "Lax",
  path: "/",
  partitioned: false,
  refreshAfterMs: 60_000,
  rebalance: "persistent",
};
const ip: PersistenceRuleConfig = { type: "client-ip", ipv4Prefix: 32, ipv6Prefix: 64 };
const chain = (m: Member[], rules: PersistenceRuleConfig[]) =>
  new PersistenceChain(m, { pool: "app", rules, keys: [KEY], hashBalanceFactor: 1.25 });

/** Issues a cookie for a new session and returns it with the backend it names. */
function newSession(c: PersistenceChain): { cookie: string; backend: string } {
  const f = facts();
  const placed = c.place(f);
  if (!placed) throw new Error("not placed");
  const effects = c.remember(f, placed.placement, {
    setCookies: [],
    location: null,
    cacheControl: null,
    secure: false,
  });
  const sc = effects.find((e) => e.kind === "set-cookie");
  if (sc?.kind !== "set-cookie") throw new Error("no cookie");
  return { cookie: sc.header.split(";")[0] as string, backend: placed.placement.backendId };
}

describe("persistence chain", () => {
  test("the first rule that names an eligible backend wins", () => {
    const m = members();
    const c = chain(m, [insert, ip]);
    const s = newSession(c);
    const placed = c.place(facts({ cookie: s.cookie }));
    expect(placed?.placement).toMatchObject({ backendId: s.backend, rule: "cookie-insert", outcome: "hit" });
  });

  test("a session on a backend in maintenance moves to the same next choice on every instance", () => {
    const a = members();
    const b = members();
    const ca = chain(a, [insert]);
    const cb = chain(b, [insert]);
    for (let i = 0; i < 50; i++) {
      const s = newSession(ca);
      for (const set of [a, b]) for (const x of set) x.state = x.id === s.backend ? "maint" : "ready";
      const pa = ca.place(facts({ cookie: s.cookie }))?.placement;
      const pb = cb.place(facts({ cookie: s.cookie }))?.placement;
      expect(pa?.outcome).toBe("repinned");
      expect(pa?.backendId).not.toBe(s.backend);
      expect(pb?.backendId).toBe(pa?.backendId as string);
      for (const set of [a, b]) for (const x of set) x.state = "ready";
    }
  });

  test("a draining backend keeps its pinned sessions and gets no new ones", () => {
    const m = members();
    const c = chain(m, [insert]);
    const s = newSession(c);
    const drained = m.find((x) => x.id === s.backend) as Member;
    drained.state = "drain";
    expect(c.place(facts({ cookie: s.cookie }))?.placement).toMatchObject({
      backendId: s.backend,
      outcome: "hit",
    });
    for (let i = 0; i < 200; i++) expect(c.place(facts())?.placement.backendId).not.toBe(s.backend);
  });

  test("pure hash rules return to a backend once it recovers", () => {
    const m = members();
    const c = chain(m, [ip]);
    const home = c.place(facts())?.placement.backendId as string;
    (m.find((x) => x.id === home) as Member).down = true;
    const away = c.place(facts())?.placement.backendId;
    expect(away).not.toBe(home);
    (m.find((x) => x.id === home) as Member).down = false;
    expect(c.place(facts())?.placement.backendId).toBe(home);
  });

  test("a retry excludes failed backends and follows the key's order", () => {
    const m = members();
    const c = chain(m, [insert]);
    const s = newSession(c);
    const first = c.place(facts({ cookie: s.cookie }));
    const retry = c.place(facts({ cookie: s.cookie }), new Set([s.backend]), first?.placement);
    expect(retry?.placement.backendId).not.toBe(s.backend);
    expect(retry?.placement.outcome).toBe("repinned");
  });

  test("ServerHellos teach a chain with a tls-session rule; a chain without one has no learner", () => {
    const tls: PersistenceRuleConfig = { type: "tls-session", expireMs: 60_000, maxEntries: 100 };
    const c = chain(members(), [tls, ip]);
    const learner = c.serverHelloLearner();
    expect(learner).not.toBeNull();
    learner?.learn("5e55", "b3", facts().nowSec);
    expect(c.place(facts({ tlsSessionId: "5e55" }))?.placement).toMatchObject({
      backendId: "b3",
      rule: "tls-session",
      outcome: "hit",
    });
    expect(chain(members(), [insert, ip]).serverHelloLearner()).toBeNull();
  });

  test("nothing eligible gives null", () => {
    const m = members().map((x) => ({ ...x, state: "maint" as const }));
    expect(chain(m, [insert]).place(facts())).toBeNull();
  });

  test("bounded loads keep new sessions off an overloaded backend", () => {
    const m = members();
    const c = chain(m, []);
    (m[0] as Member).inflight = 100;
    for (let i = 0; i < 200; i++) expect(c.place(facts())?.placement.backendId).not.toBe("b1");
  });
});
