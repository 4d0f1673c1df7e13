/** Cookie insert attributes for embedded apps: Partitioned (CHIPS) and Path, through a running tether. */
import { afterEach, describe, expect, test } from "bun:test";
import type { ConfigInput } from "../../src/config/schema.ts";
import { backend, type TestBackend } from "../support/backends.ts";
import { config, type Running, startInProcess } from "../support/tether.ts";

let backends: TestBackend[] = [];
let running: Running | null = null;
afterEach(async () => {
  await running?.stop();
  running = null;
  for (const b of backends) b.stop();
  backends = [];
});

function input(rule: Record<string, unknown>): ConfigInput {
  return {
    listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
    pools: {
      app: {
        backends: backends.map((b, i) => ({ id: `b${i + 1}`, url: b.url })),
        persistence: [{ type: "cookie", mode: "insert", ...rule }],
      },
    },
    secrets: { cookieKeys: [Buffer.alloc(32, 5).toString("base64")] },
  } as ConfigInput;
}

describe("cookie insert attributes", () => {
  test('"partitioned": true with "sameSite": "None" and "path" give Partitioned, Secure and that Path, and the cookie still routes', async () => {
    backends = [backend("b1"), backend("b2")];
    running = startInProcess(input({ partitioned: true, sameSite: "None", path: "/embed" }));
    const first = await fetch(`${running.url()}/embed/x`);
    const home = await first.text();
    const sc = first.headers.get("set-cookie") as string;
    expect(sc).toMatch(/^TETHER=[A-Za-z0-9_-]+; Path=\/embed; HttpOnly; SameSite=None; Secure; Partitioned$/);
    const cookie = sc.split(";")[0] as string;
    for (let i = 0; i < 5; i++) {
      const res = await fetch(`${running.url()}/embed/x`, { headers: { cookie } });
      expect(await res.text()).toBe(home);
    }
  });

  test("by default: Path=/ and no Partitioned", async () => {
    backends = [backend("b1")];
    running = startInProcess(input({}));
    const res = await fetch(running.url());
    await res.text();
    const sc = res.headers.get("set-cookie") as string;
    expect(sc).toContain("; Path=/;");
    expect(sc).not.toContain("Partitioned");
  });

  test("kept across a reload, and changed by one", async () => {
    backends = [backend("b1")];
    running = startInProcess(input({ partitioned: true, sameSite: "None" }));
    await running.tether.reload(config(input({ partitioned: true, sameSite: "None" })));
    let res = await fetch(running.url());
    await res.text();
    expect(res.headers.get("set-cookie")).toEndWith("; Partitioned");
    await running.tether.reload(config(input({ path: "/app" })));
    res = await fetch(running.url());
    await res.text();
    expect(res.headers.get("set-cookie")).toContain("Path=/app;");
    expect(res.headers.get("set-cookie")).not.toContain("Partitioned");
  });
});
