/**
 * Adding and removing backends through the admin API: validation, conflicts,
 * the token, the drain before removal, worker threads, SIGHUP and restarts.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { backend, type TestBackend } from "../support/backends.ts";
import { tempDir, writeConfig } from "../support/files.ts";
import { spawnCli, startInProcess, workersListening } from "../support/tether.ts";
import { until } from "../support/wait.ts";

const TOKEN = "admin-test-token";
const KEY = Buffer.alloc(32, 7).toString("base64");
let cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

function backends(...names: string[]): TestBackend[] {
  const list = names.map((n) => backend(n));
  for (const b of list) cleanup.push(() => b.stop());
  return list;
}

const api = (admin: string, path: string, init: RequestInit = {}) =>
  fetch(`${admin}${path}`, { ...init, headers: { authorization: `Bearer ${TOKEN}`, ...init.headers } });
const post = (admin: string, pool: string, body: unknown) =>
  api(admin, `/api/backends/${pool}`, {
    method: "POST",
    body: typeof body === "string" ? body : JSON.stringify(body),
  });

async function sources(admin: string): Promise<Record<string, string>> {
  const body = (await (await api(admin, "/api/backends")).json()) as {
    backends: { id: string; source: string }[];
  };
  return Object.fromEntries(body.backends.map((b) => [b.id, b.source]));
}

describe("POST and DELETE /api/backends", () => {
  test("bad bodies get 400 with every reason, duplicates 409, no token 401, unknown pools 404", async () => {
    const [a, extra] = backends("a", "extra");
    const t = startInProcess({
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: { app: { backends: [{ id: "a", url: a?.url }] } },
      admin: { address: "127.0.0.1:0", token: TOKEN },
    } as never);
    cleanup.push(() => t.stop());
    const admin = `http://127.0.0.1:${t.tether.admin?.port}`;
    const cases: [unknown, number, string][] = [
      ["not json", 400, "body must be JSON"],
      [{ url: extra?.url }, 400, "id: is required"],
      [{ id: "bad id", url: "ftp://x", weight: -1 }, 400, "id: must be 1-63"],
      [{ id: "x", url: "http://1.2.3.4:80/path" }, 400, "url: must name only scheme, host and port"],
      [{ id: "x", url: extra?.url, state: "drain" }, 400, 'unknown key "state"'],
      [{ id: "a", url: extra?.url }, 409, 'already has a backend "a"'],
    ];
    for (const [body, status, reason] of cases) {
      const res = await post(admin, "app", body);
      expect({ body, status: res.status }).toEqual({ body, status });
      expect(((await res.json()) as { error: string }).error).toContain(reason);
    }
    const bad = (await (await post(admin, "app", { id: "bad id", url: "ftp://x", weight: -1 })).json()) as {
      errors: string[];
    };
    expect(bad.errors.length).toBe(3);
    expect((await fetch(`${admin}/api/backends/app`, { method: "POST", body: "{}" })).status).toBe(401);
    expect((await post(admin, "nope", { id: "x", url: extra?.url })).status).toBe(404);
    // A method the path does not take: 405 naming the ones it does.
    const put = await api(admin, "/api/backends/app", { method: "PUT", body: "{}" });
    expect([put.status, put.headers.get("allow")]).toEqual([405, "POST"]);
    const post2 = await api(admin, "/api/backends/app/a", { method: "POST", body: "{}" });
    expect([post2.status, post2.headers.get("allow")]).toEqual([405, "PUT, DELETE"]);

    const created = await post(admin, "app", { id: "extra", url: extra?.url, weight: 2 });
    expect(created.status).toBe(201);
    expect(((await created.json()) as { backend: unknown }).backend).toMatchObject({
      id: "extra",
      source: "api",
      weight: 2,
    });
    expect((await post(admin, "app", { id: "extra", url: extra?.url })).status).toBe(409);
    expect(await sources(admin)).toEqual({ a: "config", extra: "api" });

    const delConfig = await api(admin, "/api/backends/app/a", { method: "DELETE" });
    expect(delConfig.status).toBe(409);
    expect((await fetch(`${admin}/api/backends/app/extra`, { method: "DELETE" })).status).toBe(401);
    const del = await api(admin, "/api/backends/app/extra", { method: "DELETE" });
    expect(del.status).toBe(202);
    expect(((await del.json()) as { backend: { state: string; removing: boolean } }).backend).toMatchObject({
      state: "drain",
      removing: true,
    });
    await until(async () => !("extra" in (await sources(admin))), 5_000, "the deleted backend to leave");
    expect(t.audit.filter((e) => String(e.event).startsWith("backend.")).map((e) => e.event)).toEqual([
      "backend.added",
      "backend.removing",
      "backend.removed",
    ]);
  });

  test('"workers": 2: an added backend is served by every worker within a second, survives SIGHUP and a restart, and leaves when deleted', async () => {
    const [a, b, extra] = backends("a", "b", "extra");
    const dir = tempDir();
    const input = {
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: {
        app: {
          backends: [
            { id: "a", url: a?.url },
            { id: "b", url: b?.url },
          ],
          persistence: [{ type: "cookie", mode: "insert" }],
        },
      },
      admin: { address: "127.0.0.1:0", token: TOKEN },
      secrets: { cookieKeys: [KEY] },
      snapshot: { file: "state.msgpack" },
      workers: 2,
    };
    const file = writeConfig(dir, input);
    let child = spawnCli(["--config", file]);
    cleanup.push(() => child.stop());
    let web = `http://127.0.0.1:${await workersListening(child)}`;
    let admin = `http://127.0.0.1:${await child.listening("admin")}`;

    expect((await post(admin, "app", { id: "extra", url: extra?.url, weight: 1000 })).status).toBe(201);
    // A session on the new backend, then fresh connections (spread over both workers by the kernel)
    // carrying its cookie: every one reaches it once every worker serves the new membership.
    let cookie = "";
    await until(
      async () => {
        const res = await fetch(`${web}/`, { headers: { connection: "close" } });
        cookie = (res.headers.get("set-cookie") ?? "").split(";")[0] as string;
        return (await res.text()) === "extra";
      },
      1_000,
      "a new session on the added backend",
    );
    const pinned = async () => {
      const answers = await Promise.all(
        Array.from({ length: 16 }, async () =>
          (await fetch(`${web}/`, { headers: { cookie, connection: "close" } })).text(),
        ),
      );
      return answers.every((x) => x === "extra");
    };
    await until(pinned, 1_000, "every worker to send the session to the added backend");

    child.proc.kill("SIGHUP");
    await child.waitFor((l) => l.msg === "config reloaded");
    expect(await sources(admin)).toEqual({ a: "config", b: "config", extra: "api" });
    expect(await pinned()).toBe(true);

    await child.stop();
    child = spawnCli(["--config", file]);
    web = `http://127.0.0.1:${await workersListening(child)}`;
    admin = `http://127.0.0.1:${await child.listening("admin")}`;
    expect(await sources(admin)).toEqual({ a: "config", b: "config", extra: "api" });
    expect(await pinned()).toBe(true);

    expect((await api(admin, "/api/backends/app/extra", { method: "DELETE" })).status).toBe(202);
    await until(async () => !("extra" in (await sources(admin))), 5_000, "the deleted backend to leave");
    const after = await Promise.all(
      Array.from({ length: 16 }, async () =>
        (await fetch(`${web}/`, { headers: { cookie, connection: "close" } })).text(),
      ),
    );
    expect(after.every((x) => x === "a" || x === "b")).toBe(true);
  });
});
