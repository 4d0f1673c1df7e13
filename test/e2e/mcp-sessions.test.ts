/**
 * Sessions named in a response header: stateful MCP servers built with the
 * official SDK behind tether, SDK Streamable HTTP clients in front. A session
 * lives in one server's memory only, so a request that lands elsewhere gets
 * "Session not found".
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { ConfigInput } from "../../src/config/schema.ts";
import { tempDir, writeConfig } from "../support/files.ts";
import { type McpBackend, mcpBackend, mcpSession } from "../support/mcp.ts";
import { type Running, spawnCli, startInProcess, workersListening } from "../support/tether.ts";

const CLIENTS = 8;
const CALLS = 5;

let backends: McpBackend[] = [];
let running: Running | null = null;
afterEach(async () => {
  await running?.stop();
  running = null;
  for (const b of backends) b.stop();
  backends = [];
});

function mcpConfig(rule: Record<string, unknown>, extra: Partial<ConfigInput> = {}): ConfigInput {
  backends = ["m1", "m2", "m3"].map(mcpBackend);
  return {
    listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "mcp" }],
    pools: {
      mcp: {
        backends: backends.map((b) => ({ id: b.name, url: b.url })),
        persistence: [rule as never],
      },
    },
    ...extra,
  } as ConfigInput;
}

/** Every client's calls, run at once. */
const runClients = (url: string) =>
  Promise.all(Array.from({ length: CLIENTS }, () => mcpSession(url, CALLS)));

const notFound = () => backends.reduce((n, b) => n + b.sessionNotFound, 0);

/** Each client's answers came from one server, counting its calls 1..CALLS in one session. */
function expectOneServerEach(results: { answers: string[]; errors: string[] }[]) {
  for (const r of results) {
    expect(r.errors).toEqual([]);
    const server = r.answers[0]?.split(":")[0];
    expect(r.answers).toEqual(Array.from({ length: CALLS }, (_, i) => `${server}:${i + 1}`));
  }
}

describe("header rule and MCP servers", () => {
  test('"mode": "hash" (the default) cannot follow a session the server named: clients get "Session not found"', async () => {
    running = startInProcess(mcpConfig({ type: "header", name: "Mcp-Session-Id" }));
    const results = await runClients(running.url());
    // The first request carries no id and is placed as new; the id it gets hashes elsewhere two times in three.
    expect(notFound()).toBeGreaterThan(0);
    expect(results.some((r) => r.errors.length > 0)).toBe(true);
  });

  test('"mode": "learn": 8 SDK clients, 5 tool calls each, 0 "Session not found"', async () => {
    running = startInProcess(mcpConfig({ type: "header", name: "Mcp-Session-Id", mode: "learn" }));
    const results = await runClients(running.url());
    expectOneServerEach(results);
    expect(notFound()).toBe(0);
    // Sessions were spread, not all on one server.
    expect(backends.filter((b) => b.sessions > 0).length).toBeGreaterThan(1);
    // Each client's session was created once (its initialize) and never moved.
    const events = running.audit.map((e) => e.event);
    expect(events.filter((e) => e === "session.created")).toHaveLength(CLIENTS);
    expect(events).not.toContain("session.repinned");
  });

  test('"mode": "prefix": 8 SDK clients, 5 tool calls each, 0 "Session not found"; the client sees a route prefix, the server its own id', async () => {
    running = startInProcess(mcpConfig({ type: "header", name: "Mcp-Session-Id", mode: "prefix" }));
    const results = await runClients(running.url());
    expectOneServerEach(results);
    expect(notFound()).toBe(0);
    const init = await fetch(`${running.url()}/mcp`, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "application/json, text/event-stream" },
      body: JSON.stringify({
        jsonrpc: "2.0",
        id: 1,
        method: "initialize",
        params: {
          protocolVersion: "2025-06-18",
          capabilities: {},
          clientInfo: { name: "raw", version: "1" },
        },
      }),
    });
    await init.text();
    expect(init.headers.get("mcp-session-id")).toMatch(/^[A-Za-z0-9_-]{16}~[0-9a-f-]{36}$/);
  });

  test('"mode": "prefix" needs nothing shared: a second instance with the same keys routes the session', async () => {
    const keys = { cookieKeys: [Buffer.alloc(32, 7).toString("base64")] };
    const cfg = mcpConfig({ type: "header", name: "Mcp-Session-Id", mode: "prefix" }, { secrets: keys });
    running = startInProcess(cfg);
    const other = startInProcess(cfg);
    try {
      const init = await fetch(`${running.url()}/mcp`, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json, text/event-stream" },
        body: JSON.stringify({
          jsonrpc: "2.0",
          id: 1,
          method: "initialize",
          params: {
            protocolVersion: "2025-06-18",
            capabilities: {},
            clientInfo: { name: "raw", version: "1" },
          },
        }),
      });
      await init.text();
      const sid = init.headers.get("mcp-session-id") as string;
      const headers = {
        "content-type": "application/json",
        accept: "application/json, text/event-stream",
        "mcp-session-id": sid,
        "mcp-protocol-version": "2025-06-18",
      };
      const ping = (url: string) =>
        fetch(`${url}/mcp`, {
          method: "POST",
          headers,
          body: JSON.stringify({ jsonrpc: "2.0", id: 2, method: "ping" }),
        });
      for (const url of [running.url(), other.url(), other.url()]) {
        const res = await ping(url);
        expect(res.status).toBe(200);
        await res.text();
      }
      expect(notFound()).toBe(0);
    } finally {
      await other.stop();
    }
  });

  test("a made-up id is placed as a new session and never learned", async () => {
    running = startInProcess(mcpConfig({ type: "header", name: "Mcp-Session-Id", mode: "learn" }));
    const res = await fetch(`${running.url()}/mcp`, {
      method: "POST",
      headers: { "content-type": "application/json", "mcp-session-id": "made-up" },
      body: "{}",
    });
    expect(res.status).toBe(404);
    await res.text();
    const pool = running.tether.runtime.pools.get("mcp");
    expect(pool?.chain.tables.get("0:header")?.size).toBe(0);
  });
});

describe('header "mode": "learn" with "workers": 2', () => {
  test('8 SDK clients, 5 tool calls each, 0 "Session not found"', async () => {
    const cfg = mcpConfig(
      { type: "header", name: "Mcp-Session-Id", mode: "learn" },
      { workers: 2, snapshot: false },
    );
    const child = spawnCli(["--config", writeConfig(tempDir(), cfg)]);
    try {
      const port = await workersListening(child);
      const results = await runClients(`http://127.0.0.1:${port}`);
      expectOneServerEach(results);
      expect(notFound()).toBe(0);
    } finally {
      await child.stop();
    }
  }, 30_000);
});
