/**
 * Dynamic membership, the pure parts: merging the overlay into a config, and
 * when a backend being removed may leave.
 */
import { describe, expect, test } from "bun:test";
import { composeConfig, type Member, memberProblem } from "../../src/config/members.ts";
import { REMOVAL_DEADLINE_MS, removalDeadlineMs, removalVerdict } from "../../src/pool/removal.ts";
import { buildRuntime } from "../../src/server/runtime.ts";
import { dynamicBackends } from "../../src/state/snapshot.ts";
import { config } from "../support/tether.ts";

const base = config({
  listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
  pools: {
    app: { backends: [{ id: "a", url: "http://127.0.0.1:9001" }] },
    tls: { backends: [{ id: "t", url: "tcp://127.0.0.1:9443" }] },
  },
});
const api = (id: string, extra: Partial<Member> = {}): Member => ({
  pool: "app",
  id,
  url: `http://127.0.0.11:${8000 + id.length}`,
  weight: 1,
  source: "api",
  ...extra,
});

describe("composeConfig", () => {
  test("adds members after the listed backends, sorted by id, tagged with their source", () => {
    const { config: c, skipped } = composeConfig(base, [api("z"), api("m", { source: "dns" })]);
    expect(skipped).toEqual([]);
    expect(c.pools.app?.backends.map((b) => [b.id, b.source])).toEqual([
      ["a", undefined],
      ["m", "dns"],
      ["z", "api"],
    ]);
    expect(c.pools.app?.backends[2]).toMatchObject({ hostname: "127.0.0.11", port: 8001, state: "ready" });
    // The base is not changed: a later merge starts from the same file.
    expect(base.pools.app?.backends.length).toBe(1);
  });

  test("a discovered https member is checked against its server name with the pool's discover.tls; the snapshot keeps the name", () => {
    const withTls = config({
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: {
        app: {
          discover: { dns: "_https._tcp.app.test", type: "SRV", scheme: "https", tls: { verify: false } },
        },
      },
    });
    const m: Member = {
      pool: "app",
      id: "one.app.test_8443",
      url: "https://127.0.0.11:8443",
      weight: 1,
      source: "dns",
      serverName: "one.app.test",
    };
    const { config: c } = composeConfig(withTls, [
      m,
      { ...m, id: "x", source: "api", serverName: "ignored" },
    ]);
    expect(c.pools.app?.backends.map((b) => [b.id, b.tls])).toEqual([
      ["one.app.test_8443", { serverName: "one.app.test", verify: false }],
      ["x", undefined],
    ]);
    const saved = dynamicBackends(buildRuntime(c, undefined, [Buffer.alloc(32)]));
    expect(saved.find((b) => b.id === m.id)?.serverName).toBe("one.app.test");
    expect(saved.find((b) => b.id === "x")?.serverName).toBeUndefined();
  });

  test("a member being removed is merged as drain (keeps its sessions, takes no new ones), with its deadline", () => {
    const { config: c } = composeConfig(base, [api("z", { removing: true, removeUntil: 1_767_225_600_000 })]);
    expect(c.pools.app?.backends[1]).toMatchObject({
      id: "z",
      state: "drain",
      removing: true,
      removeUntil: 1_767_225_600_000,
    });
    const b = buildRuntime(c, undefined, [Buffer.alloc(32)])
      .pools.get("app")
      ?.get("z");
    expect([b?.removing, b?.removeUntil]).toEqual([true, 1_767_225_600_000]);
  });

  test("members that no longer fit are left out with the reason, never fatal", () => {
    const { config: c, skipped } = composeConfig(base, [
      api("a"),
      api("x", { pool: "gone" }),
      api("y", { url: "tcp://127.0.0.1:1" }),
    ]);
    expect(c.pools.app?.backends.map((b) => b.id)).toEqual(["a"]);
    expect(skipped.map((s) => s.reason)).toEqual([
      'backend "a" is in the config file',
      'no pool named "gone"',
      'pool "app" holds http(s):// backends',
    ]);
  });

  test.each([
    ["a bad id", { id: "bad id" }, "id: must be 1-63 letters"],
    ["a URL with a path", { url: "http://10.0.0.1:80/x" }, "url: must name only scheme, host and port"],
    ["a negative weight", { weight: -1 }, "weight:"],
    ["an http backend in a tls-passthrough pool", { pool: "tls" }, 'pool "tls" holds tcp:// backends'],
  ])("memberProblem names %s", (_what, change, reason) => {
    expect(memberProblem(base, { ...api("n"), ...change })).toContain(reason);
  });
});

describe("removalVerdict", () => {
  const facts = { now: 10_000, since: 9_000, until: 39_000, load: 0, settleMs: 0 };
  test.each([
    ["nothing in flight: it leaves", {}, "idle"],
    ["requests in flight: it waits", { load: 2 }, "wait"],
    ["still busy at the deadline: it leaves anyway", { load: 2, now: 39_000 }, "deadline"],
    ["idle but the load report may predate the drain: it waits", { settleMs: 1_500 }, "wait"],
    ["idle once a report since the drain has come", { settleMs: 1_000 }, "idle"],
    ["a deadline already passed: it leaves at once", { load: 5, until: 9_000 }, "deadline"],
  ] as const)("%s", (_what, change, verdict) => {
    expect(removalVerdict({ ...facts, ...change })).toBe(verdict);
  });

  test("the deadline is the pool's drainDeadlineMs, or the default when the pool sets none", () => {
    expect(removalDeadlineMs(5_000)).toBe(5_000);
    expect(removalDeadlineMs(undefined)).toBe(REMOVAL_DEADLINE_MS);
    expect(removalDeadlineMs(0)).toBe(REMOVAL_DEADLINE_MS);
  });
});
