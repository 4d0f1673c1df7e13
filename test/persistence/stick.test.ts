/**
 * "stick": true on the hashing rules: a key keeps its first backend when a
 * backend joins, and a flood fills only that rule's own table.
 */
import { describe, expect, test } from "bun:test";
import type { PersistenceRuleConfig } from "../../src/config/schema.ts";
import { type Member, PersistenceChain } from "../../src/persistence/chain.ts";
import type { RequestFacts } from "../../src/persistence/types.ts";
import { config } from "../support/tether.ts";

const KEY = Buffer.alloc(32, 6);
const NOW = 1_800_000_000;
const members = (ids: string[]): Member[] =>
  ids.map((id) => ({ id, weight: 1, state: "ready" as const, inflight: 0 }));
const FOUR = ["b1", "b2", "b3", "b4"];
const FIVE = [...FOUR, "b5"];
const noResponse = { setCookies: [], location: null, cacheControl: null, secure: false };

const chain = (ids: string[], rules: PersistenceRuleConfig[], previous?: PersistenceChain) =>
  new PersistenceChain(members(ids), {
    pool: "app",
    rules,
    keys: [KEY],
    hashBalanceFactor: 1.25,
    ...(previous ? { previousTables: previous.tables } : {}),
  });

/** Places (and, as the forwarder does once served, remembers) a request from `ip`. */
function serve(c: PersistenceChain, f: RequestFacts): string {
  const placed = c.place(f);
  if (!placed) throw new Error("not placed");
  c.remember(f, placed.placement, noResponse);
  return placed.placement.backendId;
}

const fromIp = (ip: string, headers = new Headers()): RequestFacts => ({
  cookie: null,
  target: "/",
  clientIp: ip,
  headers,
  nowSec: NOW,
});
const ips = Array.from({ length: 500 }, (_, i) => `198.51.${i >> 8}.${i & 255}`);

describe("stick on the hashing rules", () => {
  const plain: PersistenceRuleConfig = { type: "client-ip", ipv4Prefix: 32, ipv6Prefix: 64 };
  const stuck: PersistenceRuleConfig = { ...plain, stick: true };

  test("without stick, adding a fifth backend moves about a fifth of the addresses (the baseline)", () => {
    const before = chain(FOUR, [plain]);
    const first = ips.map((ip) => serve(before, fromIp(ip)));
    const after = chain(FIVE, [plain], before);
    const moved = ips.filter((ip, i) => serve(after, fromIp(ip)) !== first[i]).length;
    expect(moved).toBeGreaterThan(ips.length * 0.1);
  });

  test("with stick, adding a fifth backend moves none of them; new addresses still reach it", () => {
    const before = chain(FOUR, [stuck]);
    const first = ips.map((ip) => serve(before, fromIp(ip)));
    const after = chain(FIVE, [stuck], before);
    expect(ips.map((ip) => serve(after, fromIp(ip)))).toEqual(first);
    const fresh = Array.from({ length: 200 }, (_, i) => serve(after, fromIp(`203.0.${i >> 8}.${i & 255}`)));
    expect(fresh).toContain("b5");
  });

  test("a remembered key whose backend goes to maintenance moves once, and stays when it is back", () => {
    const c = chain(FOUR, [stuck]);
    const home = serve(c, fromIp("192.0.2.7"));
    const m = c.members.find((x) => x.id === home) as Member;
    m.state = "maint";
    const moved = serve(c, fromIp("192.0.2.7"));
    expect(moved).not.toBe(home);
    m.state = "ready";
    expect(serve(c, fromIp("192.0.2.7"))).toBe(moved);
  });

  test("a header rule with stick keeps its values; a flood evicts only its own table's entries", () => {
    const rules: PersistenceRuleConfig[] = [
      { type: "cookie", mode: "learn", name: "SID", expireMs: 1_800_000, maxEntries: 1000 },
      { type: "header", name: "X-User", mode: "hash", stick: true, maxEntries: 50 },
    ];
    const c = chain(FOUR, rules);
    const learned = c.tables.get("0:cookie") as NonNullable<ReturnType<typeof c.tables.get>>;
    learned.set("app-session", "b3", NOW);
    for (let i = 0; i < 5000; i++) serve(c, fromIp("192.0.2.1", new Headers({ "x-user": `flood-${i}` })));
    expect(c.tables.get("1:header")?.size).toBe(50);
    expect(learned.size).toBe(1);
    expect(learned.peekHashed(learned.keyOf("app-session"), NOW)?.backendId).toBe("b3");
  });

  test("a stick table is kept out of Redis unless the rule says share", () => {
    const c = chain(FOUR, [
      stuck,
      { type: "header", name: "X-Team", mode: "hash", stick: true, share: true },
    ]);
    expect(c.tables.get("0:client-ip")?.clusterShared).toBe(false);
    expect(c.tables.get("1:header")?.clusterShared).toBe(true);
  });

  test('"share" without "stick" is a config error naming the rule', () => {
    expect(() =>
      config({
        listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
        pools: {
          app: {
            backends: [{ id: "b1", url: "http://127.0.0.1:9001" }],
            persistence: [{ type: "client-ip", share: true }],
          },
        },
      }),
    ).toThrow("pools.app.persistence[0].share");
  });
});
