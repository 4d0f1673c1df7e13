/**
 * The discover block in the config: bad settings are
 * reported with their JSON path.
 */
import { describe, expect, test } from "bun:test";
import { ConfigError } from "../../src/config/load.ts";
import { config } from "../support/tether.ts";

const withPool = (pool: Record<string, unknown>) => ({
  listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
  pools: { app: pool },
});

function problems(input: unknown): string[] {
  try {
    config(input as never);
    return [];
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    return e.problems.map((p) => `${p.path}: ${p.message}`);
  }
}

describe("discover config", () => {
  test("a pool with discover needs no listed backends, and gets the documented defaults", () => {
    const c = config(withPool({ discover: { dns: "app.internal", port: 8080 } }) as never);
    expect(c.pools.app?.discover).toEqual({
      dns: "app.internal",
      type: "A",
      port: 8080,
      scheme: "http",
      intervalMs: 5_000,
      timeoutMs: 2_000,
      holdCount: 3,
      maxBackends: 64,
    });
    expect(c.pools.app?.drainDeadlineMs).toBeUndefined();
  });

  test.each([
    ["no backends and no discover", {}, "pools.app.backends: needs at least one backend (or discover)"],
    ["A without a port", { discover: { dns: "a.b" } }, "pools.app.discover.port: is required for A lookups"],
    [
      "SRV with a port",
      { discover: { dns: "_h._tcp.a.b", type: "SRV", port: 80 } },
      "pools.app.discover.port: SRV answers carry the port: remove it",
    ],
    ["a bad name", { discover: { dns: "a b", port: 80 } }, "pools.app.discover.dns: must be a DNS name"],
    [
      "a bad resolver",
      { discover: { dns: "a.b", port: 80, resolver: "nope" } },
      "pools.app.discover.resolver: must be host:port",
    ],
    [
      "an interval under 100 ms",
      { discover: { dns: "a.b", port: 80, intervalMs: 10 } },
      "pools.app.discover.intervalMs: must be at least 100",
    ],
    [
      "tcp discovery beside http backends",
      {
        backends: [{ id: "a", url: "http://127.0.0.1:1" }],
        discover: { dns: "a.b", port: 80, scheme: "tcp" },
      },
      "pools.app.discover.scheme: must match the listed backends",
    ],
  ])("%s is reported with its path", (_what, pool, message) => {
    expect(problems(withPool(pool)).join("\n")).toContain(message);
  });
});
