import { describe, expect, test } from "bun:test";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { buildRuntime } from "../../src/server/runtime.ts";
import { applySnapshot, collectSnapshot, readSnapshot, writeSnapshot } from "../../src/state/snapshot.ts";
import { sessionBackends } from "../support/backends.ts";
import { tempDir, writeConfig } from "../support/files.ts";
import { config, spawnCli } from "../support/tether.ts";

const KEY = Buffer.alloc(32, 4);
const runtime = () =>
  buildRuntime(
    config({
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: {
        app: {
          backends: [
            { id: "b1", url: "http://127.0.0.1:1" },
            { id: "b2", url: "http://127.0.0.1:2" },
          ],
          persistence: [{ type: "cookie", mode: "learn", name: "SID", expireMs: 60_000 }],
        },
      },
    }),
    undefined,
    [KEY],
  );

describe("snapshot", () => {
  test("learned entries and operator states round-trip; the file is 0600 and holds no session ID", () => {
    const a = runtime();
    const table = a.pools.get("app")?.chain.tables.get("0:cookie");
    const now = Date.now();
    table?.set("very-secret-session-id", "b2", Math.floor(now / 1000));
    const file = join(tempDir(), "state.msgpack");
    writeSnapshot(
      file,
      collectSnapshot(a, new Map([["app\0b1", { state: "drain" as const, until: 0 }]]), now),
    );
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(readFileSync(file).includes(Buffer.from("very-secret-session-id"))).toBe(false);
    const { snapshot, problem } = readSnapshot(file);
    expect(problem).toBeUndefined();
    expect(snapshot?.states).toEqual([{ pool: "app", backend: "b1", state: "drain" }]);
    const b = runtime();
    expect(applySnapshot(b, snapshot as never, now)).toBe(1);
    expect(
      b.pools
        .get("app")
        ?.chain.tables.get("0:cookie")
        ?.get("very-secret-session-id", Math.floor(now / 1000))?.backendId,
    ).toBe("b2");
  });

  test("expired entries are skipped when loading", () => {
    const a = runtime();
    const now = Date.now();
    a.pools
      .get("app")
      ?.chain.tables.get("0:cookie")
      ?.set("s", "b1", Math.floor(now / 1000));
    const snap = collectSnapshot(a, new Map(), now);
    expect(applySnapshot(runtime(), snap, now + 61_000)).toBe(0);
  });

  test("entries sealed under another key are skipped", () => {
    const a = runtime();
    const now = Date.now();
    a.pools
      .get("app")
      ?.chain.tables.get("0:cookie")
      ?.set("s", "b1", Math.floor(now / 1000));
    const snap = collectSnapshot(a, new Map(), now);
    const other = buildRuntime(a.config, undefined, [Buffer.alloc(32, 9)]);
    expect(applySnapshot(other, snap, now)).toBe(0);
  });

  test("a corrupt, truncated or foreign file is reported, never thrown", () => {
    const dir = tempDir();
    const good = join(dir, "good.msgpack");
    writeSnapshot(
      good,
      collectSnapshot(runtime(), new Map([["app\0b1", { state: "maint" as const, until: 0 }]])),
    );
    const bytes = readFileSync(good);
    const cases: [string, Uint8Array | string][] = [
      ["truncated", bytes.subarray(0, Math.floor(bytes.length / 2))],
      ["garbage", "not msgpack at all \u0000\u00ff"],
      ["foreign", Buffer.from([0x93, 1, 2, 3])],
    ];
    for (const [name, content] of cases) {
      const f = join(dir, `${name}.msgpack`);
      writeFileSync(f, content);
      const r = readSnapshot(f);
      expect(r.snapshot).toBeNull();
      expect(r.problem).toBeString();
    }
    expect(readSnapshot(join(dir, "missing.msgpack"))).toEqual({ snapshot: null });
  });

  test("a learned session and a drained backend survive a restart of the real process", async () => {
    const backends = sessionBackends();
    const dir = tempDir();
    const file = writeConfig(dir, {
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: {
        app: {
          backends: backends.map((b, i) => ({ id: `b${i + 1}`, url: b.url })),
          persistence: [{ type: "cookie", mode: "learn", name: "SID" }],
        },
      },
      secrets: { cookieKeys: [KEY.toString("base64")] },
      admin: { address: "127.0.0.1:0", token: "t0k3n-for-test" },
    });
    try {
      const first = spawnCli(["--config", file]);
      const port = await first.listening("web");
      const adminPort = await first.listening("admin");
      const res = await fetch(`http://127.0.0.1:${port}/`);
      const sid = (res.headers.get("set-cookie") ?? "").split(";")[0] as string;
      const home = res.headers.get("x-backend");
      const other = ["b1", "b2", "b3"].find((b) => b !== home) as string;
      await fetch(`http://127.0.0.1:${adminPort}/api/backends/app/${other}`, {
        method: "PUT",
        headers: { authorization: "Bearer t0k3n-for-test" },
        body: '{"state":"maint"}',
      });
      expect(await first.stop()).toBe(0);
      expect(statSync(join(dir, "tether-state.msgpack")).mode & 0o777).toBe(0o600);

      const second = spawnCli(["--config", file]);
      const port2 = await second.listening("web");
      const loaded = await second.waitFor((l) => l.msg === "snapshot loaded");
      expect(loaded.entries).toBe(1);
      for (let i = 0; i < 10; i++) {
        const again = await fetch(`http://127.0.0.1:${port2}/`, { headers: { cookie: sid } });
        expect(again.headers.get("x-backend")).toBe(home);
      }
      const adminPort2 = await second.listening("admin");
      const list = (await (
        await fetch(`http://127.0.0.1:${adminPort2}/api/backends`, {
          headers: { authorization: "Bearer t0k3n-for-test" },
        })
      ).json()) as { backends: { id: string; state: string }[] };
      expect(list.backends.find((b) => b.id === other)?.state).toBe("maint");
      await second.stop();
    } finally {
      for (const b of backends) b.stop();
    }
  });
});
