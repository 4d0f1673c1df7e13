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

  test('"share" without "stick" on a url rule is a config error naming the rule', () => {
    const cfg = (rule: object) => () =>
      config({
        listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
        pools: {
          app: {
            backends: [{ id: "b1", url: "http://127.0.0.1:9001" }],
            persistence: [{ type: "url", param: "sid", ...rule }],
          },
        },
      });
    expect(cfg({ share: true })).toThrow("pools.app.persistence[0].share");
    expect(cfg({ stickMaxEntries: 10 })).toThrow("pools.app.persistence[0].stickMaxEntries");
    expect(cfg({ stick: true, share: true, stickMaxEntries: 10 })).not.toThrow();
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

describe("stick on the url rule", () => {
  const url: PersistenceRuleConfig = {
    type: "url",
    param: "sid",
    expireMs: 1_800_000,
    maxEntries: 1000,
  };
  const stuck: PersistenceRuleConfig = { ...url, stick: true };
  const withSid = (sid: string): RequestFacts => ({ ...fromIp("192.0.2.1"), target: `/cart?sid=${sid}` });
  const sids = Array.from({ length: 500 }, (_, i) => `made-up-${i}`);

  test("without stick, adding a fifth backend moves about a fifth of the IDs no backend issued", () => {
    const before = chain(FOUR, [url]);
    const first = sids.map((sid) => serve(before, withSid(sid)));
    const after = chain(FIVE, [url], before);
    const moved = sids.filter((sid, i) => serve(after, withSid(sid)) !== first[i]).length;
    expect(moved).toBeGreaterThan(sids.length * 0.1);
    expect(before.tables.get("0:url")?.size).toBe(0);
  });

  test("with stick, adding a fifth backend moves none of them; new IDs still reach it", () => {
    const before = chain(FOUR, [stuck]);
    const first = sids.map((sid) => serve(before, withSid(sid)));
    expect(before.tables.get("0:url-stick")?.size).toBe(sids.length);
    expect(before.tables.get("0:url")?.size).toBe(0);
    const after = chain(FIVE, [stuck], before);
    expect(sids.map((sid) => serve(after, withSid(sid)))).toEqual(first);
    const fresh = Array.from({ length: 200 }, (_, i) => serve(after, withSid(`fresh-${i}`)));
    expect(fresh).toContain("b5");
  });

  test("a flood of invented IDs evicts only stick entries, never a learned session", () => {
    const c = chain(FOUR, [{ ...stuck, stickMaxEntries: 50 }]);
    const learned = c.tables.get("0:url") as NonNullable<ReturnType<typeof c.tables.get>>;
    const stick = c.tables.get("0:url-stick") as NonNullable<ReturnType<typeof c.tables.get>>;
    // A backend issues a session ID (Set-Cookie of the same name): learned, not stuck.
    const f = fromIp("192.0.2.1");
    const placed = c.place(f);
    if (!placed) throw new Error("not placed");
    c.remember(f, placed.placement, { ...noResponse, setCookies: ["sid=issued-1; Path=/"] });
    const home = placed.placement.backendId;
    for (let i = 0; i < 5000; i++) serve(c, withSid(`flood-${i}`));
    expect(stick.size).toBe(50);
    expect(learned.size).toBe(1);
    expect(learned.peekHashed(learned.keyOf("issued-1"), NOW)?.backendId).toBe(home);
    expect(serve(c, withSid("issued-1"))).toBe(home);
    expect(stick.size).toBe(50);
  });

  test("a stuck ID whose backend goes to maintenance moves once and stays; a learned one takes precedence", () => {
    const c = chain(FOUR, [stuck]);
    const home = serve(c, withSid("abc"));
    const m = c.members.find((x) => x.id === home) as Member;
    m.state = "maint";
    const moved = serve(c, withSid("abc"));
    expect(moved).not.toBe(home);
    m.state = "ready";
    expect(serve(c, withSid("abc"))).toBe(moved);
    // A backend then issues the same ID: the learned entry wins over the stuck one.
    const other = FOUR.find((id) => id !== moved) as string;
    c.tables.get("0:url")?.set("abc", other, NOW);
    expect(serve(c, withSid("abc"))).toBe(other);
  });

  test("the stick table stays out of Redis unless the rule says share; the learned one is always shared", () => {
    const local = chain(FOUR, [stuck]);
    expect(local.tables.get("0:url")?.clusterShared).toBe(true);
    expect(local.tables.get("0:url-stick")?.clusterShared).toBe(false);
    const shared = chain(FOUR, [{ ...stuck, share: true }]);
    expect(shared.tables.get("0:url-stick")?.clusterShared).toBe(true);
    expect(chain(FOUR, [url]).tables.has("0:url-stick")).toBe(false);
  });

  test("an ID held nowhere here is looked up in both tables; one learned here is looked up in neither", () => {
    const c = chain(FOUR, [stuck]);
    expect(c.missingKeys(withSid("elsewhere")).map((m) => m.table)).toEqual(["0:url", "0:url-stick"]);
    serve(c, withSid("stuck-here"));
    expect(c.missingKeys(withSid("stuck-here")).map((m) => m.table)).toEqual(["0:url"]);
    c.tables.get("0:url")?.set("learned-here", "b1", NOW);
    expect(c.missingKeys(withSid("learned-here"))).toEqual([]);
    expect(
      chain(FOUR, [url])
        .missingKeys(withSid("elsewhere"))
        .map((m) => m.table),
    ).toEqual(["0:url"]);
  });
});
