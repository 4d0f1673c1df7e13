/**
 * Traffic splits without sockets: the weighted choices, the order in which a
 * split looks for a session's pool, its config errors and `tether route`.
 */
import { describe, expect, test } from "bun:test";
import { route } from "../../src/cli/route.ts";
import { hashKey } from "../../src/ring/hash.ts";
import { buildRuntime } from "../../src/server/runtime.ts";
import { drawByWeight, TrafficSplit, weightedPick } from "../../src/server/split.ts";
import { config } from "../support/tether.ts";

const KEY = Buffer.alloc(32, 21);

const input = (split: unknown, persistence: unknown[] = [{ type: "cookie", mode: "insert" }]) => ({
  listeners: [
    {
      name: "web",
      protocol: "http",
      address: "127.0.0.1:0",
      pool: "v1",
      routes: [{ pathPrefix: "/", split }],
    },
  ],
  pools: {
    v1: { backends: [{ id: "a", url: "http://127.0.0.1:9001" }], persistence },
    v2: { backends: [{ id: "b", url: "http://127.0.0.1:9002" }], persistence },
  },
  secrets: { cookieKeys: [KEY.toString("base64")] },
});
const splitOf = (split: unknown, persistence?: unknown[]) => {
  const runtime = buildRuntime(config(input(split, persistence) as never), undefined, []);
  const picked = runtime.routers.get("web")?.pick("x", "/");
  if (!(picked instanceof TrafficSplit)) throw new Error("no split");
  return picked;
};
const facts = (over: object = {}) => ({
  cookie: null,
  target: "/",
  clientIp: "203.0.113.9",
  headers: new Headers(),
  nowSec: 1_800_000_000,
  ...over,
});
const W = (v1: number, v2: number) => [
  { pool: "v1", weight: v1 },
  { pool: "v2", weight: v2 },
];

describe("weighted choices", () => {
  test("weightedPick gives each pool its share of keys, and weight 0 none", () => {
    const counts = [0, 0];
    for (let i = 0; i < 20_000; i++) {
      const k = weightedPick(hashKey(`k${i}`), W(90, 10));
      counts[k] = (counts[k] ?? 0) + 1;
    }
    // Binomial(20000, 0.1): sd ~42.
    expect(counts[1]).toBeGreaterThan(1780);
    expect(counts[1]).toBeLessThan(2220);
    for (let i = 0; i < 1000; i++) expect(weightedPick(hashKey(`k${i}`), W(5, 0))).toBe(0);
    expect(weightedPick(1, W(0, 0))).toBe(-1);
  });

  test("raising one pool's weight moves keys only to that pool", () => {
    let moved = 0;
    for (let i = 0; i < 5000; i++) {
      const h = hashKey(`k${i}`);
      const before = weightedPick(h, W(90, 10));
      const after = weightedPick(h, W(80, 20));
      if (before !== after) {
        moved++;
        expect([before, after]).toEqual([0, 1]);
      }
    }
    // About a ninth of v1's keys (0.9 - 0.8 of all): ~500.
    expect(moved).toBeGreaterThan(400);
    expect(moved).toBeLessThan(600);
  });

  test("drawByWeight walks the cumulative weights", () => {
    expect([0, 0.89, 0.9, 0.999].map((u) => drawByWeight(u, W(90, 10)))).toEqual([0, 0, 1, 1]);
    expect(drawByWeight(0.5, W(0, 0))).toBe(-1);
  });
});

describe("a split's choice", () => {
  test("a new session is drawn by weight and given the split's cookie, which then keeps it whatever the weights", () => {
    const before = splitOf(W(1, 0));
    const first = before.choose(facts());
    expect(first).toMatchObject({ pool: "v1", by: "weight" });
    const cookie = (first.cookie as string).split(";")[0] as string;
    expect(cookie).toStartWith("TETHER_SPLIT=");
    // Another runtime (a reload, another instance) with the same keys and weight 0 for v1.
    expect(splitOf(W(0, 1)).choose(facts({ cookie }))).toEqual({ pool: "v1", by: "cookie", cookie: null });
  });

  test("without the split's cookie, a session its pool's rules name stays in that pool", () => {
    const insert = [{ type: "cookie", mode: "insert" }];
    const runtime = buildRuntime(config(input(W(0, 1), insert) as never), undefined, [KEY]);
    const f = facts();
    const placed = runtime.pools.get("v1")?.chain.place(f);
    const effects = runtime.pools.get("v1")?.chain.remember(f, placed?.placement as never, {
      setCookies: [],
      location: null,
      cacheControl: null,
      secure: false,
    });
    const sc = effects?.find((e) => e.kind === "set-cookie");
    const cookie = sc?.kind === "set-cookie" ? (sc.header.split(";")[0] as string) : "";
    expect(splitOf(W(0, 1), insert).choose(facts({ cookie }))).toEqual({
      pool: "v1",
      by: "session",
      cookie: null,
    });
  });

  test("a hashed session key is split by its hash, with no cookie, the same in every runtime", () => {
    const ip = [{ type: "client-ip" }];
    const a = splitOf(W(50, 50), ip);
    const b = splitOf(W(50, 50), ip);
    const pools = new Set<string>();
    for (let i = 0; i < 100; i++) {
      const f = facts({ clientIp: `192.0.2.${i}` });
      const choice = a.choose(f);
      expect(choice).toMatchObject({ by: "key", cookie: null });
      expect(b.choose(f)).toEqual(choice);
      pools.add(choice.pool);
    }
    expect(pools.size).toBe(2);
  });
});

describe("split config", () => {
  const problems = (split: unknown, extra: object = {}) => {
    try {
      config({ ...input(split), ...extra } as never);
      return "";
    } catch (e) {
      return String(e);
    }
  };

  test("errors name the JSON path", () => {
    expect(problems([{ pool: "nope", weight: 1 }])).toContain("listeners[0].routes[0].split[0].pool");
    expect(problems([{ pool: "nope", weight: 1 }])).toContain('no pool named "nope"');
    expect(problems(W(0, 0))).toContain("listeners[0].routes[0].split:");
    expect(problems(W(0, 0))).toContain("weight above 0");
    expect(problems([...W(1, 1), { pool: "v1", weight: 2 }])).toContain("already in the split");
    expect(problems([{ pool: "v1", weight: -1 }])).toContain("listeners[0].routes[0].split[0].weight");
    expect(problems([])).toContain("needs at least one pool");
  });

  test("a route names pool or split, not both, and splitCookie only with split", () => {
    const both = {
      listeners: [
        {
          name: "web",
          protocol: "http",
          address: "127.0.0.1:0",
          pool: "v1",
          routes: [{ pathPrefix: "/", pool: "v1", split: W(1, 1) }],
        },
      ],
    };
    expect(problems(W(1, 1), both)).toContain("a route needs pool or split, not both");
    const cookieOnly = {
      listeners: [
        {
          name: "web",
          protocol: "http",
          address: "127.0.0.1:0",
          pool: "v1",
          routes: [{ pathPrefix: "/", pool: "v1", splitCookie: "S" }],
        },
      ],
    };
    expect(problems(W(1, 1), cookieOnly)).toContain("splitCookie needs split");
  });
});

describe("tether route --listener", () => {
  test("shows the split, how it chose, and the backend in the chosen pool", () => {
    const answer = route(config(input(W(0, 3)) as never), {
      pool: "",
      listener: "web",
      host: "x",
      cookies: [],
      headers: [],
    });
    expect(answer.split).toEqual({
      pools: ["v1=0", "v2=3"],
      choice: "v2: a new session, drawn by weight (a cookie keeps it there)",
    });
    expect(answer).toMatchObject({ pool: "v2", backend: "b" });
  });
});
