/**
 * DNS discovery against a real DNS server (dnsmasq on loopback) and real
 * backends on distinct loopback addresses sharing one port.
 */
import { afterEach, describe, expect, test } from "bun:test";
import type { Server } from "bun";
import { makeCert } from "../support/certs.ts";
import { type Dnsmasq, startDnsmasq } from "../support/dnsmasq.ts";
import { spawnCli, startInProcess, tempDir, workersListening, writeConfig } from "../support/tether.ts";
import { until } from "../support/wait.ts";

let cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

/** Backends answering their own address, on 127.0.0.11, .12, ... and one port. */
function loopbackBackends(count: number): { port: number; servers: Server<undefined>[] } {
  const servers: Server<undefined>[] = [];
  let port = 0;
  for (let i = 0; i < count; i++) {
    const hostname = `127.0.0.${11 + i}`;
    const s = Bun.serve({ hostname, port, fetch: () => new Response(hostname) });
    port = s.port ?? 0;
    servers.push(s);
  }
  cleanup.push(() => {
    for (const s of servers) s.stop(true);
  });
  return { port, servers };
}

function client(base: string) {
  let cookie = "";
  return async () => {
    const res = await fetch(`${base}/`, { headers: cookie ? { cookie } : {} });
    const set = res.headers.get("set-cookie");
    if (set) cookie = set.split(";")[0] as string;
    return await res.text();
  };
}

async function setup(records: number[], discover: Record<string, unknown> = {}) {
  const { port } = loopbackBackends(4);
  const line = (i: number) => `127.0.0.${i} app.test`;
  const dns: Dnsmasq = await startDnsmasq(records.map(line));
  cleanup.push(() => dns.stop());
  const t = startInProcess({
    listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
    pools: {
      app: {
        discover: {
          dns: "app.test",
          port,
          intervalMs: 100,
          holdCount: 2,
          resolver: dns.address,
          ...discover,
        },
        persistence: [{ type: "cookie", mode: "insert" }],
        drainDeadlineMs: 5_000,
      },
    },
    admin: { address: "127.0.0.1:0", token: "t" },
  });
  cleanup.push(() => t.stop());
  const ids = () => (t.tether.runtime.pools.get("app")?.backends ?? []).map((b) => b.id).sort();
  const setRecords = (list: number[]) => dns.setHosts(list.map(line), "app.test");
  return { t, dns, port, ids, setRecords };
}

describe("DNS discovery (A records, dnsmasq)", () => {
  test("records become backends with stable ids; sessions stay while records are added; a removed record's sessions move once", async () => {
    const { t, port, ids, setRecords } = await setup([11, 12]);
    await until(() => ids().length === 2, 5_000, "two discovered backends");
    expect(ids()).toEqual([`127.0.0.11_${port}`, `127.0.0.12_${port}`]);
    expect(t.tether.runtime.pools.get("app")?.backends.every((b) => b.source === "dns")).toBe(true);

    const clients = Array.from({ length: 24 }, () => client(t.url()));
    const first = await Promise.all(clients.map((c) => c()));
    expect(new Set(first)).toEqual(new Set(["127.0.0.11", "127.0.0.12"]));

    await setRecords([11, 12, 13]);
    await until(() => ids().length === 3, 5_000, "the added record's backend");
    expect(await Promise.all(clients.map((c) => c()))).toEqual(first);

    await setRecords([11, 13]);
    await until(() => !ids().includes(`127.0.0.12_${port}`), 5_000, "the removed record's backend to leave");
    const moved = await Promise.all(clients.map((c) => c()));
    first.forEach((was, i) => {
      if (was === "127.0.0.12") expect(moved[i]).not.toBe("127.0.0.12");
      else expect(moved[i]).toBe(was);
    });
    expect(await Promise.all(clients.map((c) => c()))).toEqual(moved);
    const events = t.audit
      .filter((e) => String(e.event).startsWith("backend."))
      .map((e) => `${e.event} ${e.backend}`);
    expect(events).toContain(`backend.removing 127.0.0.12_${port}`);
    expect(events).toContain(`backend.removed 127.0.0.12_${port}`);
  });

  test("a record missing from fewer than holdCount answers keeps its backend", async () => {
    const { ids, setRecords, port } = await setup([11, 12], { holdCount: 100, intervalMs: 100 });
    await until(() => ids().length === 2, 5_000, "two discovered backends");
    await setRecords([11]);
    await Bun.sleep(500);
    expect(ids()).toEqual([`127.0.0.11_${port}`, `127.0.0.12_${port}`]);
  });

  test("the resolver killed mid-run changes nothing for clients: the last set stays, logged and counted", async () => {
    const { t, dns, ids } = await setup([11, 12]);
    await until(() => ids().length === 2, 5_000, "two discovered backends");
    const clients = Array.from({ length: 12 }, () => client(t.url()));
    const first = await Promise.all(clients.map((c) => c()));
    await dns.stop();
    await until(
      () => t.log.lines.some((l) => l.msg === "dns lookup gave no backends; keeping the last known set"),
      5_000,
      "the failure to be logged",
    );
    await Bun.sleep(400);
    expect(ids().length).toBe(2);
    expect(await Promise.all(clients.map((c) => c()))).toEqual(first);
    const metrics = await (
      await fetch(`http://127.0.0.1:${t.tether.admin?.port}/metrics`, {
        headers: { authorization: "Bearer t" },
      })
    ).text();
    expect(metrics).toMatch(/tether_discovery_lookups_total\{pool="app",outcome="failed"\} [1-9]/);
  });

  test("an answer beyond maxBackends is capped, logged and counted", async () => {
    const { t, ids } = await setup([11, 12, 13, 14], { maxBackends: 2 });
    await until(() => ids().length === 2, 5_000, "two discovered backends");
    await until(
      () => t.log.lines.some((l) => l.msg === "dns answer exceeds discover.maxBackends; records ignored"),
      5_000,
      "the cap to be logged",
    );
    await Bun.sleep(300);
    expect(ids().length).toBe(2);
  });
});

describe("DNS discovery (SRV records)", () => {
  test("one backend per target and port, with its weight, resolved through the same resolver", async () => {
    const { port } = loopbackBackends(2);
    const dns = await startDnsmasq(
      ["127.0.0.11 one.app.test", "127.0.0.12 two.app.test"],
      [`_http._tcp.app.test,one.app.test,${port},0,5`, `_http._tcp.app.test,two.app.test,${port},0,20`],
    );
    cleanup.push(() => dns.stop());
    const t = startInProcess({
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: {
        app: {
          discover: { dns: "_http._tcp.app.test", type: "SRV", intervalMs: 100, resolver: dns.address },
        },
      },
    });
    cleanup.push(() => t.stop());
    const pool = () => t.tether.runtime.pools.get("app");
    await until(() => (pool()?.backends.length ?? 0) === 2, 5_000, "two SRV backends");
    expect(pool()?.backends.map((b) => [b.id, b.url, b.weight])).toEqual([
      [`one.app.test_${port}`, `http://127.0.0.11:${port}`, 5],
      [`two.app.test_${port}`, `http://127.0.0.12:${port}`, 20],
    ]);
    expect(await (await fetch(t.url())).text()).toMatch(/^127\.0\.0\.1[12]$/);
  });
});

describe("DNS discovery (SRV records over https)", () => {
  test("a target's certificate is checked against the target name, not its address", async () => {
    const dir = tempDir();
    // The certificate names only the target: checked against 127.0.0.11 it would be refused.
    const { cert, key } = await makeCert(dir, "one.app.test");
    const secure = Bun.serve({
      hostname: "127.0.0.11",
      port: 0,
      tls: { cert: Bun.file(cert), key: Bun.file(key) },
      fetch: () => new Response("one over tls"),
    });
    cleanup.push(() => secure.stop(true));
    const dns = await startDnsmasq(
      ["127.0.0.11 one.app.test"],
      [`_https._tcp.app.test,one.app.test,${secure.port},0,1`],
    );
    cleanup.push(() => dns.stop());
    const t = startInProcess({
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: {
        app: {
          retries: 0,
          discover: {
            dns: "_https._tcp.app.test",
            type: "SRV",
            scheme: "https",
            intervalMs: 100,
            resolver: dns.address,
            tls: { ca: cert },
          },
        },
      },
    });
    cleanup.push(() => t.stop());
    const pool = () => t.tether.runtime.pools.get("app");
    await until(() => (pool()?.backends.length ?? 0) === 1, 5_000, "the SRV backend");
    expect(pool()?.backends.map((b) => [b.id, b.url, b.target.tls?.serverName])).toEqual([
      [`one.app.test_${secure.port}`, `https://127.0.0.11:${secure.port}`, "one.app.test"],
    ]);
    const res = await fetch(`${t.url()}/`);
    expect([res.status, await res.text()]).toEqual([200, "one over tls"]);
  });
});

describe('DNS discovery with "workers": 2 through the CLI', () => {
  test("an added record is served by every worker; a removed one drains on every worker, then leaves", async () => {
    const { port } = loopbackBackends(3);
    const line = (i: number) => `127.0.0.${i} app.test`;
    const dns = await startDnsmasq([11, 12].map(line));
    cleanup.push(() => dns.stop());
    const token = "dns-workers-token";
    const file = writeConfig(tempDir(), {
      listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
      pools: {
        app: {
          discover: { dns: "app.test", port, intervalMs: 100, holdCount: 2, resolver: dns.address },
          persistence: [{ type: "cookie", mode: "insert" }],
          drainDeadlineMs: 10_000,
        },
      },
      secrets: { cookieKeys: [Buffer.alloc(32, 5).toString("base64")] },
      admin: { address: "127.0.0.1:0", token },
      snapshot: false,
      workers: 2,
    });
    const child = spawnCli(["--config", file]);
    cleanup.push(() => child.stop());
    const web = `http://127.0.0.1:${await workersListening(child)}`;
    const admin = `http://127.0.0.1:${await child.listening("admin")}`;
    const added = `127.0.0.13_${port}`;
    const view = async () => {
      const body = (await (
        await fetch(`${admin}/api/backends`, { headers: { authorization: `Bearer ${token}` } })
      ).json()) as { backends: { id: string; removing: boolean }[] };
      return new Map(body.backends.map((b) => [b.id, b]));
    };
    // Fresh connections, spread over both workers by the kernel.
    const answers = (cookie: string) =>
      Promise.all(
        Array.from({ length: 16 }, async () =>
          (await fetch(`${web}/`, { headers: { cookie, connection: "close" } })).text(),
        ),
      );
    const untilAsync = async (cond: () => Promise<boolean>, ms: number, what: string) => {
      const end = Date.now() + ms;
      while (!(await cond())) {
        if (Date.now() > end)
          throw new Error(
            `timed out after ${ms} ms waiting for ${what}\n${child.lines.map((l) => JSON.stringify(l)).join("\n")}`,
          );
        await Bun.sleep(20);
      }
    };
    await untilAsync(async () => (await view()).size === 2, 5_000, "two discovered backends");

    await dns.setHosts([11, 12, 13].map(line), "app.test");
    let cookie = "";
    await untilAsync(
      async () => {
        const res = await fetch(`${web}/`, { headers: { connection: "close" } });
        cookie = (res.headers.get("set-cookie") ?? "").split(";")[0] as string;
        return (await res.text()) === "127.0.0.13";
      },
      5_000,
      "a new session on the added record's backend",
    );
    await untilAsync(
      async () => (await answers(cookie)).every((x) => x === "127.0.0.13"),
      2_000,
      "every worker to honour the session pinned to the added backend",
    );

    await dns.setHosts([11, 12].map(line), "app.test");
    await untilAsync(async () => (await view()).get(added)?.removing === true, 5_000, "the drain to begin");
    // Draining: the session keeps its backend on every worker (nothing is in flight, so it
    // leaves once the primary has heard from its workers; the drain outlasts these requests).
    expect(await answers(cookie)).toEqual(Array(16).fill("127.0.0.13"));
    await untilAsync(async () => !(await view()).has(added), 8_000, "the backend to leave");
    const after = await answers(cookie);
    expect(after.every((x) => x === "127.0.0.11" || x === "127.0.0.12")).toBe(true);
  });
});
