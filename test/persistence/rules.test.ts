/**
 * The contract every persistence rule passes, then table tests per rule.
 */
import { describe, expect, test } from "bun:test";
import { ClientIpRule, maskedAddress } from "../../src/persistence/client-ip.ts";
import { CookieInsertRule } from "../../src/persistence/cookie-insert.ts";
import { CookieLearnRule } from "../../src/persistence/cookie-learn.ts";
import { CookiePrefixRule } from "../../src/persistence/cookie-prefix.ts";
import { getCookie, mapCookie } from "../../src/persistence/cookies.ts";
import { HeaderLearnRule, HeaderPrefixRule, HeaderRule } from "../../src/persistence/header.ts";
import { StickTable } from "../../src/persistence/stick-table.ts";
import { TlsSessionRule } from "../../src/persistence/tls-session.ts";
import type { Decision, Placement, RequestFacts, ResponseFacts, Rule } from "../../src/persistence/types.ts";
import { sessionIdFromTarget, UrlRule } from "../../src/persistence/url.ts";

const KEY = Buffer.alloc(32, 3);
const IDS = ["b1", "b2", "b3"];
const NOW = 1_800_000_000;

const facts = (over: Partial<RequestFacts> = {}): RequestFacts => ({
  cookie: null,
  target: "/",
  clientIp: "203.0.113.9",
  headers: new Headers(),
  nowSec: NOW,
  ...over,
});
const noResponse: ResponseFacts = { setCookies: [], location: null, cacheControl: null, secure: false };
const placed = (backendId: string, decisions: Decision[] = []): Placement => ({
  backendId,
  rule: "new",
  outcome: "new",
  sessionKey: null,
  decisions,
});

interface Subject {
  name: string;
  make(): Rule;
  /** Request facts that this rule recognises, once `prime` has run on `rule`. */
  valid(rule: Rule): RequestFacts;
  /** The same request with its persistence data tampered with (null: a pure hash rule has nothing to tamper). */
  tampered: ((rule: Rule) => RequestFacts) | null;
}

function issuedInsertCookie(rule: Rule): string {
  const effects = rule.remember?.(facts(), placed("b2"), { kind: "none", rule: rule.name }, noResponse) ?? [];
  const sc = effects.find((e) => e.kind === "set-cookie");
  if (sc?.kind !== "set-cookie") throw new Error("no cookie issued");
  return sc.header.split(";")[0] as string;
}

function prefixedCookie(rule: Rule): string {
  const res = { ...noResponse, setCookies: ["JSESSIONID=abc; Path=/"] };
  const e = rule.remember?.(facts(), placed("b2"), { kind: "none", rule: rule.name }, res)[0];
  if (e?.kind !== "rewrite-set-cookie") throw new Error("no prefix");
  return e.header.split(";")[0] as string;
}

const learnTable = () => new StickTable(KEY, 60_000, 1000);

/** A response carrying a header field (what BackendAnswer.header reads). */
const withHeader = (name: string, value: string): ResponseFacts => ({
  ...noResponse,
  header: (n) => (n === name ? value : null),
});

function prefixedHeader(rule: Rule): string {
  const e = rule.remember?.(
    facts(),
    placed("b2"),
    { kind: "none", rule: rule.name },
    withHeader("mcp-session-id", "abc"),
  )[0];
  if (e?.kind !== "set-header") throw new Error("no prefix");
  return e.value;
}

const subjects: Subject[] = [
  {
    name: "cookie insert",
    make: () =>
      new CookieInsertRule({ name: "T", sameSite: "Lax", refreshAfterMs: 60_000 }, "app", [KEY], IDS),
    valid: (r) => facts({ cookie: issuedInsertCookie(r) }),
    tampered: (r) => {
      const c = issuedInsertCookie(r);
      return facts({ cookie: `${c.slice(0, 30)}${c[30] === "x" ? "y" : "x"}${c.slice(31)}` });
    },
  },
  {
    name: "cookie prefix",
    make: () => new CookiePrefixRule("JSESSIONID", "app", [KEY], IDS),
    valid: (r) => facts({ cookie: prefixedCookie(r) }),
    tampered: (r) =>
      facts({ cookie: prefixedCookie(r).replace(/=(.)/, (_m, ch) => `=${ch === "Q" ? "R" : "Q"}`) }),
  },
  {
    name: "cookie learn",
    make: () => {
      const rule = new CookieLearnRule("SID", learnTable());
      rule.table.set("s-123", "b3", NOW);
      return rule;
    },
    valid: () => facts({ cookie: "SID=s-123" }),
    tampered: () => facts({ cookie: "SID=s-124" }),
  },
  {
    name: "url (learned)",
    make: () => {
      const rule = new UrlRule("sid", "jsessionid", learnTable());
      rule.table.set("u-1", "b1", NOW);
      return rule;
    },
    valid: () => facts({ target: "/cart?sid=u-1" }),
    tampered: null,
  },
  {
    name: "tls session",
    make: () => {
      const rule = new TlsSessionRule(learnTable());
      rule.learnServerHello("0a0b0c", "b2", NOW);
      return rule;
    },
    valid: () => facts({ tlsSessionId: "0a0b0c" }),
    tampered: () => facts({ tlsSessionId: "0a0b0d" }),
  },
  {
    name: "client-ip",
    make: () => new ClientIpRule(24, 64),
    valid: () => facts({ clientIp: "198.51.100.7" }),
    tampered: null,
  },
  {
    name: "header (learn)",
    make: () => {
      const rule = new HeaderLearnRule("Mcp-Session-Id", learnTable());
      rule.table.set("m-1", "b2", NOW);
      return rule;
    },
    valid: () => facts({ headers: new Headers({ "mcp-session-id": "m-1" }) }),
    tampered: () => facts({ headers: new Headers({ "mcp-session-id": "m-2" }) }),
  },
  {
    name: "header (prefix)",
    make: () => new HeaderPrefixRule("Mcp-Session-Id", "app", [KEY], IDS),
    valid: (r) => facts({ headers: new Headers({ "mcp-session-id": prefixedHeader(r) }) }),
    tampered: (r) =>
      facts({
        headers: new Headers({
          "mcp-session-id": prefixedHeader(r).replace(/^(.)/, (_m, ch) => (ch === "Q" ? "R" : "Q")),
        }),
      }),
  },
  {
    name: "header",
    make: () => new HeaderRule("x-session-id"),
    valid: () => facts({ headers: new Headers({ "x-session-id": "abc" }) }),
    tampered: null,
  },
];

describe("the contract every rule passes", () => {
  for (const s of subjects) {
    describe(s.name, () => {
      test("no input gives no decision", () => {
        expect(s.make().decide(facts({ clientIp: "" })).kind).toBe("none");
      });
      test("a recognised input gives a decision", () => {
        const rule = s.make();
        expect(rule.decide(s.valid(rule)).kind).not.toBe("none");
      });
      test("the same input gives the same answer, also from a second instance", () => {
        const a = s.make();
        const input = s.valid(a);
        const first = a.decide(input);
        expect(a.decide(input)).toEqual(first);
        if (
          s.name.startsWith("cookie") ||
          s.name.startsWith("url") ||
          s.name.startsWith("tls") ||
          s.name.startsWith("header (")
        )
          return; // state or keys live in the instance
        expect(s.make().decide(input)).toEqual(first);
      });
      if (s.tampered) {
        const tampered = s.tampered;
        test("tampered input gives no decision", () => {
          const rule = s.make();
          expect(rule.decide(tampered(rule)).kind).toBe("none");
        });
      }
      test("a rule with a table names the key a recognised input looks up there; one without has neither", () => {
        const rule = s.make();
        if (!rule.table) {
          expect(rule.lookupKey).toBeUndefined();
          return;
        }
        const key = rule.lookupKey?.(s.valid(rule)) ?? null;
        expect(key).not.toBeNull();
        expect(rule.table.peekHashed(key as number, NOW)?.backendId).toBeDefined();
        expect(rule.lookupKey?.(facts({ clientIp: "" }))).toBeNull();
      });
    });
  }
});

describe("cookie insert", () => {
  const make = (over: object = {}) =>
    new CookieInsertRule({ name: "T", sameSite: "Lax", refreshAfterMs: 60_000, ...over }, "app", [KEY], IDS);

  test("a valid token pins to the backend it names", () => {
    const r = make();
    const d = r.decide(facts({ cookie: issuedInsertCookie(r) }));
    expect(d).toMatchObject({ kind: "pinned", backendId: "b2", rule: "cookie-insert" });
  });

  const expiry: { why: string; opts: object; later: number; want: string }[] = [
    { why: "past maxLifeMs is rejected as expired", opts: { maxLifeMs: 10_000 }, later: 11, want: "expired" },
    { why: "past maxIdleMs is rejected as expired", opts: { maxIdleMs: 5_000 }, later: 6, want: "expired" },
    {
      why: "within both limits is a hit",
      opts: { maxIdleMs: 5_000, maxLifeMs: 10_000 },
      later: 4,
      want: "pinned",
    },
  ];
  for (const row of expiry) {
    test(row.why, () => {
      const r = make(row.opts);
      const d = r.decide(facts({ cookie: issuedInsertCookie(r), nowSec: NOW + row.later }));
      expect(String(d.kind === "none" ? d.rejected : d.kind)).toBe(row.want);
    });
  }

  test("a session re-pinned after failover keeps its issue time: maxLifeMs counts from the first cookie", () => {
    const r = make({ maxLifeMs: 10_000 });
    const cookie = issuedInsertCookie(r); // issued at NOW, on b2
    const later = facts({ cookie, nowSec: NOW + 6 });
    const d = r.decide(later);
    expect(d).toMatchObject({ kind: "pinned", backendId: "b2" });
    const moved: Placement = {
      backendId: "b3",
      rule: "cookie-insert",
      outcome: "repinned",
      sessionKey: d.kind === "pinned" ? (d.session?.sessionKey ?? null) : null,
      decisions: [d],
    };
    const sc = r.remember?.(later, moved, d, noResponse).find((e) => e.kind === "set-cookie");
    const reissued = sc?.kind === "set-cookie" ? (sc.header.split(";")[0] as string) : "";
    expect(r.decide(facts({ cookie: reissued, nowSec: NOW + 9 }))).toMatchObject({
      kind: "pinned",
      backendId: "b3",
    });
    expect(r.decide(facts({ cookie: reissued, nowSec: NOW + 11 }))).toMatchObject({
      kind: "none",
      rejected: "expired",
    });
  });

  test("a token naming a backend that no longer exists is rejected as unknown-backend", () => {
    const old = make();
    const cookie = issuedInsertCookie(old);
    const shrunk = new CookieInsertRule(
      { name: "T", sameSite: "Lax", refreshAfterMs: 60_000 },
      "app",
      [KEY],
      ["b1"],
    );
    expect(shrunk.decide(facts({ cookie }))).toMatchObject({ kind: "none", rejected: "unknown-backend" });
  });

  test("Secure is added on https and with SameSite=None; Domain and Max-Age when configured", () => {
    const r = make({ sameSite: "None", domain: "example.com", maxAgeMs: 3_600_000 });
    const e = r.remember?.(facts(), placed("b1"), { kind: "none", rule: "cookie-insert" }, noResponse)[0];
    expect(e?.kind === "set-cookie" && e.header).toMatch(
      /; SameSite=None; Secure; Domain=example.com; Max-Age=3600$/,
    );
    const https = make().remember?.(
      facts(),
      placed("b1"),
      { kind: "none", rule: "cookie-insert" },
      { ...noResponse, secure: true },
    )[0];
    expect(https?.kind === "set-cookie" && https.header).toContain("; Secure");
  });

  test("a hit is not re-issued until refreshAfterMs has passed", () => {
    const r = make();
    const cookie = issuedInsertCookie(r);
    const soon = facts({ cookie, nowSec: NOW + 10 });
    const d = r.decide(soon);
    const hit: Placement = {
      backendId: "b2",
      rule: "cookie-insert",
      outcome: "hit",
      sessionKey: null,
      decisions: [d],
    };
    expect(r.remember?.(soon, hit, d, noResponse)).toEqual([]);
    const late = facts({ cookie, nowSec: NOW + 120 });
    const d2 = r.decide(late);
    const hit2: Placement = { ...hit, decisions: [d2] };
    expect(r.remember?.(late, hit2, d2, noResponse).some((e) => e.kind === "set-cookie")).toBe(true);
  });

  test("the rule's own cookie is removed before the backend", () => {
    expect(make().backendCookie?.("a=1; T=xyz; b=2")).toBe("a=1; b=2");
  });
});

describe("url session IDs", () => {
  const rows: { target: string; want: string | null }[] = [
    { target: "/cart?sid=ABC", want: "ABC" },
    { target: "/cart?x=1&sid=ABC&y=2", want: "ABC" },
    { target: "/cart;jsessionid=XYZ?x=1", want: "XYZ" },
    { target: "/a;jsessionid=XYZ/b", want: "XYZ" },
    { target: "/cart?sids=ABC", want: null },
    { target: "/cart?sid=", want: null },
    { target: "/", want: null },
  ];
  for (const r of rows) {
    test(`${r.target} → ${r.want}`, () =>
      expect(sessionIdFromTarget(r.target, "sid", "jsessionid")).toBe(r.want));
  }

  test("an unknown ID is hashed; a learned one is pinned; Location headers teach the table", () => {
    const rule = new UrlRule("sid", undefined, learnTable());
    expect(rule.decide(facts({ target: "/?sid=new" })).kind).toBe("hash");
    const res = { ...noResponse, location: "https://shop.example/next?sid=fromloc" };
    const effects = rule.remember(facts(), placed("b3"), { kind: "none", rule: "url" }, res);
    expect(effects).toContainEqual({ kind: "learn", rule: "url", key: "fromloc", backendId: "b3" });
  });
});

describe("client-ip masking", () => {
  const rows: { ip: string; v4: number; v6: number; want: string | null }[] = [
    { ip: "198.51.100.77", v4: 24, v6: 64, want: "198.51.100.0/24" },
    { ip: "198.51.100.77", v4: 32, v6: 64, want: "198.51.100.77/32" },
    { ip: "198.51.100.77", v4: 0, v6: 64, want: "0.0.0.0/0" },
    { ip: "2001:db8:1:2:3:4:5:6", v4: 24, v6: 64, want: "2001:db8:1:2:0:0:0:0/64" },
    { ip: "2001:db8::1", v4: 24, v6: 48, want: "2001:db8:0:0:0:0:0:0/48" },
    { ip: "not-an-ip", v4: 24, v6: 64, want: null },
  ];
  for (const r of rows)
    test(`${r.ip} /${r.v4} /${r.v6}`, () => expect(maskedAddress(r.ip, r.v4, r.v6)).toBe(r.want));
});

describe("stick table", () => {
  test("entries expire, and the least recently used is evicted past maxEntries", () => {
    const t = new StickTable(KEY, 10_000, 2);
    t.set("a", "b1", NOW);
    t.set("b", "b2", NOW);
    expect(t.get("a", NOW)?.backendId).toBe("b1"); // a is now most recent
    t.set("c", "b3", NOW);
    expect(t.get("b", NOW)).toBeNull();
    expect(t.get("a", NOW + 11)).toBeNull();
    expect(t.size).toBeLessThanOrEqual(2);
  });

  test("keys are keyed hashes: the table holds no session ID", () => {
    const t = new StickTable(KEY, 10_000, 10);
    expect(typeof t.keyOf("secret-session")).toBe("number");
    expect(t.keyOf("secret-session")).not.toBe(
      new StickTable(Buffer.alloc(32, 9), 10_000, 10).keyOf("secret-session"),
    );
  });
});

describe("cookie helpers", () => {
  test("getCookie finds the first match and tolerates spacing", () => {
    expect(getCookie("a=1;b=2; T=x ;T=y", "T")).toBe("x");
    expect(getCookie("aT=1", "T")).toBeNull();
  });
  test("mapCookie rewrites or drops one cookie", () => {
    expect(mapCookie("a=1; T=x; b=2", "T", (v) => v.toUpperCase())).toBe("a=1; T=X; b=2");
    expect(mapCookie("T=x", "T", () => null)).toBe("");
  });
});

describe("header, learn and prefix modes", () => {
  const sid = (v: string) => facts({ headers: new Headers({ "mcp-session-id": v }) });
  const none = { kind: "none", rule: "header" } as const;

  test("learn: the value a backend issued is learned on the backend that served it", () => {
    const rule = new HeaderLearnRule("Mcp-Session-Id", learnTable());
    const effects = rule.remember(facts(), placed("b3"), none, withHeader("mcp-session-id", "s-9"));
    expect(effects).toEqual([{ kind: "learn", rule: "header", key: "s-9", backendId: "b3" }]);
  });

  test("learn: a value the client sent and the backend echoes is not learned (no backend issued it)", () => {
    const rule = new HeaderLearnRule("Mcp-Session-Id", learnTable());
    expect(rule.decide(sid("made-up")).kind).toBe("none");
    expect(
      rule.remember(sid("made-up"), placed("b1"), none, withHeader("mcp-session-id", "made-up")),
    ).toEqual([]);
  });

  test("learn: a returning session whose backend echoes its id costs no write", () => {
    const rule = new HeaderLearnRule("Mcp-Session-Id", learnTable());
    rule.table.set("s-1", "b2", NOW);
    const d = rule.decide(sid("s-1"));
    expect(d).toMatchObject({ kind: "pinned", backendId: "b2" });
    expect(rule.remember(sid("s-1"), placed("b2", [d]), d, withHeader("mcp-session-id", "s-1"))).toEqual([]);
  });

  test("learn: a session re-placed elsewhere is learned where it now lives", () => {
    const rule = new HeaderLearnRule("Mcp-Session-Id", learnTable());
    rule.table.set("s-1", "b2", NOW);
    const d = rule.decide(sid("s-1"));
    expect(rule.remember(sid("s-1"), placed("b1", [d]), d, noResponse)).toEqual([
      { kind: "learn", rule: "header", key: "s-1", backendId: "b1" },
    ]);
  });

  test("prefix: the backend gets its own value back, other fields untouched", () => {
    const rule = new HeaderPrefixRule("Mcp-Session-Id", "app", [KEY], IDS);
    const wrapped = prefixedHeader(rule);
    expect(rule.decide(sid(wrapped))).toMatchObject({ kind: "pinned", backendId: "b2", key: "abc" });
    const fields = ["accept", "x", "mcp-session-id", wrapped];
    rule.backendFields(fields);
    expect(fields).toEqual(["accept", "x", "mcp-session-id", "abc"]);
  });

  test("prefix: a value without a route is rejected as malformed and reaches the backend as sent", () => {
    const rule = new HeaderPrefixRule("Mcp-Session-Id", "app", [KEY], IDS);
    expect(rule.decide(sid("plain-uuid"))).toEqual({ kind: "none", rule: "header", rejected: "malformed" });
    const fields = ["mcp-session-id", "plain-uuid"];
    rule.backendFields(fields);
    expect(fields).toEqual(["mcp-session-id", "plain-uuid"]);
  });

  test("prefix: a cookie prefix route is not accepted as a header route (routes are per purpose)", () => {
    const cookieRule = new CookiePrefixRule("JSESSIONID", "app", [KEY], IDS);
    const cookieValue = (prefixedCookie(cookieRule).split("=")[1] as string).replace("abc", "x");
    const rule = new HeaderPrefixRule("Mcp-Session-Id", "app", [KEY], IDS);
    expect(rule.decide(sid(cookieValue))).toMatchObject({ kind: "none", rejected: "bad-mac" });
  });

  test("prefix: a session moved to another backend is re-routed even when the backend names none", () => {
    const rule = new HeaderPrefixRule("Mcp-Session-Id", "app", [KEY], IDS);
    const d = rule.decide(sid(prefixedHeader(rule)));
    const [e] = rule.remember(sid("x"), placed("b1", [d]), d, noResponse);
    expect(e?.kind === "set-header" && rule.decide(sid(e.value))).toMatchObject({
      backendId: "b1",
      key: "abc",
    });
  });
});
