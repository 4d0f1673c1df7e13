import { describe, expect, test } from "bun:test";
import { route } from "../../src/cli/route.ts";
import { HeaderPrefixRule } from "../../src/persistence/header.ts";
import { config } from "../support/tether.ts";

const KEY = Buffer.alloc(32, 3).toString("base64");

function cfg(pool: Record<string, unknown>) {
  return config({
    listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
    pools: {
      app: {
        backends: [
          { id: "a", url: "http://127.0.0.1:9001" },
          { id: "b", url: "http://127.0.0.1:9002", state: "maint" },
        ],
        ...pool,
      },
    },
    secrets: { cookieKeys: [KEY] },
  });
}

const query = (over: object = {}) => ({ pool: "app", cookies: [], headers: [], ...over });

describe("tether route", () => {
  test("reports the pool's persistence settings: rules with their modes, and failover", () => {
    const answer = route(
      cfg({
        persistence: [
          { type: "header", name: "Mcp-Session-Id", mode: "learn" },
          { type: "header", name: "X-Api-Session", mode: "prefix" },
          { type: "header", name: "X-User" },
          { type: "client-ip", stick: true, maxEntries: 1000, share: true },
        ],
        failover: "strict",
      }),
      query(),
    );
    expect(answer.settings).toEqual([
      "persistence[0]: header Mcp-Session-Id (learn)",
      "persistence[1]: header X-Api-Session (prefix)",
      "persistence[2]: header X-User (hash)",
      "persistence[3]: client-ip /32 /64 stick maxEntries=1000 share",
      "failover: strict",
    ]);
  });

  test("reports a url rule's stick table", () => {
    const url = (over: object) =>
      route(cfg({ persistence: [{ type: "url", param: "sid", ...over }] }), query());
    expect(url({}).settings?.[0]).toBe("persistence[0]: url ?sid=");
    expect(url({ stick: true }).settings?.[0]).toBe("persistence[0]: url ?sid= stick maxEntries=1000000");
    expect(url({ stick: true, stickMaxEntries: 500, share: true }).settings?.[0]).toBe(
      "persistence[0]: url ?sid= stick maxEntries=500 share",
    );
  });

  test("reports a cookie insert rule's rebalance mode", () => {
    const insert = (rebalance?: string) => ({
      type: "cookie",
      mode: "insert",
      ...(rebalance ? { rebalance } : {}),
    });
    expect(route(cfg({ persistence: [insert("balanced")] }), query()).settings?.[0]).toBe(
      "persistence[0]: cookie TETHER (insert) Path=/ SameSite=Lax rebalance=balanced",
    );
    expect(route(cfg({ persistence: [insert()] }), query()).settings?.[0]).toBe(
      "persistence[0]: cookie TETHER (insert) Path=/ SameSite=Lax rebalance=persistent",
    );
  });

  test("reports the pool's drain deadline when it has one, and nothing when not", () => {
    expect(route(cfg({ drainDeadlineMs: 600_000 }), query()).settings).toEqual([
      "failover: move",
      "drainDeadlineMs: 600000",
    ]);
    expect(route(cfg({}), query()).settings).toEqual(["failover: move"]);
  });

  test("a prefixed header naming a backend in maintenance is held under strict failover, moved otherwise", () => {
    const rule = { type: "header", name: "X-Api-Session", mode: "prefix" };
    // The route for backend b, as a running tether with the same key would have issued it.
    const rule_ = new HeaderPrefixRule("X-Api-Session", "app", [Buffer.from(KEY, "base64")], ["a", "b"]);
    const placed = { backendId: "b", rule: "new", outcome: "new", sessionKey: null, decisions: [] } as const;
    const res = { setCookies: [], location: null, cacheControl: null, secure: false, header: () => "v1" };
    const [effect] = rule_.remember(
      query() as never,
      { ...placed, decisions: [] },
      { kind: "none", rule: "header" },
      res,
    );
    const issued = effect?.kind === "set-header" ? effect.value : "";
    const strict = route(
      cfg({ persistence: [rule], failover: "strict" }),
      query({ headers: [`X-Api-Session: ${issued}`] }),
    );
    expect(strict.reason).toContain("failover is strict");
    expect(strict.backend).toBe("b");
    const move = route(cfg({ persistence: [rule] }), query({ headers: [`X-Api-Session: ${issued}`] }));
    expect(move.backend).toBe("a");
    expect(move.reason).toContain("moved to the ring's next choice a");
  });
});
