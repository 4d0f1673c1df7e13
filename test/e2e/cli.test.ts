/**
 * The real command line, run as a child process: check, serve, signals.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { backend, rawBackend, type TestBackend } from "../support/backends.ts";
import { BUN, REPO, tempDir, writeConfig } from "../support/files.ts";
import { spawnCli } from "../support/tether.ts";

async function cli(args: string[], env: Record<string, string> = {}) {
  const p = Bun.spawn([BUN, join(REPO, "src/main.ts"), ...args], {
    cwd: REPO,
    env: { ...process.env, ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  return { code: await p.exited, out, err };
}

const cfg = (backends: string[], extra: Record<string, unknown> = {}) => ({
  listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
  pools: { app: { backends: backends.map((url, i) => ({ id: `b${i}`, url })) } },
  ...extra,
});

describe("tether check", () => {
  test("a valid config exits 0", async () => {
    const r = await cli(["check", "--config", "config.json"]);
    expect(r.code).toBe(0);
  });

  test("a bad config prints every problem with its JSON path and exits 2", async () => {
    const dir = tempDir();
    const bad = cfg(["http://127.0.0.1:1", "http://127.0.0.1:2", "ftp://nope"]) as any;
    bad.listeners[0].pool = "missing";
    bad.colour = "blue";
    const file = writeConfig(dir, bad);
    const r = await cli(["check", `--config=${file}`]);
    expect(r.code).toBe(2);
    expect(r.err).toContain("pools.app.backends[2].url: must be an http or https URL");
    expect(r.err).toContain('listeners[0].pool: no pool named "missing"');
    expect(r.err).toContain('unknown key "colour"');
  });

  test("serving a bad config is refused the same way", async () => {
    const file = writeConfig(tempDir(), { listeners: [] });
    const r = await cli(["--config", file]);
    expect(r.code).toBe(2);
    expect(r.err).toContain("listeners: needs at least one listener");
  });

  test("an env: secret whose variable is unset is a config error naming it", async () => {
    const file = writeConfig(
      tempDir(),
      cfg(["http://127.0.0.1:1"], { admin: { token: "env:TETHER_NOT_SET_X" } }),
    );
    const r = await cli(["check", "--config", file]);
    expect(r.code).toBe(2);
    expect(r.err).toContain("environment variable TETHER_NOT_SET_X is not set");
  });

  test("--version, --help and usage errors", async () => {
    const v = await cli(["--version"]);
    expect(v.code).toBe(0);
    expect(v.out).toMatch(/^tether \d+\.\d+\.\d+/);
    const h = await cli(["--help"]);
    expect(h.code).toBe(0);
    expect(h.out).toContain("tether check [--config FILE]");
    const u = await cli(["--frobnicate"]);
    expect(u.code).toBe(2);
    expect(u.err).toContain('unknown argument "--frobnicate"');
  });
});

describe("tether keygen and route", () => {
  test("keygen prints one base64 32-byte key on a line of its own", async () => {
    const r = await cli(["keygen"]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^[A-Za-z0-9+/]{43}=\n$/);
    expect(Buffer.from(r.out.trim(), "base64").length).toBe(32);
  });

  test("route explains where a request goes and why", async () => {
    const dir = tempDir();
    const config = {
      ...cfg(["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"]),
      pools: {
        app: {
          backends: [1, 2, 3].map((i) => ({ id: `b${i}`, url: `http://127.0.0.1:${i}` })),
          persistence: [
            { type: "cookie", mode: "insert", name: "TETHER" },
            { type: "url", param: "sid" },
            { type: "client-ip", ipv4Prefix: 24 },
          ],
        },
      },
      secrets: { cookieKeys: ["env:ROUTE_TEST_KEY"] },
    };
    const file = writeConfig(dir, config);
    const env = { ROUTE_TEST_KEY: Buffer.alloc(32, 1).toString("base64") };
    const byIp = JSON.parse(
      (await cli(["route", "--config", file, "--pool", "app", "--ip", "10.1.2.3"], env)).out,
    );
    expect(byIp).toMatchObject({ pool: "app", rule: "client-ip" });
    expect(["b1", "b2", "b3"]).toContain(byIp.backend);
    const sameNet = JSON.parse(
      (await cli(["route", "--config", file, "--pool", "app", "--ip", "10.1.2.99"], env)).out,
    );
    expect(sameNet.backend).toBe(byIp.backend);
    const bySid = JSON.parse(
      (await cli(["route", `--config=${file}`, "--pool", "app", "--path", "/x?sid=abc"], env)).out,
    );
    expect(bySid.rule).toBe("url");
    const tampered = JSON.parse(
      (
        await cli(
          ["route", "--config", file, "--pool", "app", "--cookie", "TETHER=forged", "--ip", "10.1.2.3"],
          env,
        )
      ).out,
    );
    expect(tampered.reason).toContain("cookie-insert rejected the cookie (malformed)");
    expect(tampered.rule).toBe("client-ip");
    const usage = await cli(["route", "--config", file]);
    expect(usage.code).toBe(2);
  });
});

describe("tether serve", () => {
  const backends: TestBackend[] = [];
  afterAll(() => {
    for (const b of backends) b.stop();
  });
  const make = (name: string, handler?: Parameters<typeof backend>[1]) => {
    const b = backend(name, handler);
    backends.push(b);
    return b;
  };

  test("logs one line per listener with its bound port, and proxies", async () => {
    const a = make("a");
    const file = writeConfig(tempDir(), cfg([a.url]));
    const child = spawnCli(["--config", file]);
    try {
      const port = await child.listening("web");
      expect(port).toBeGreaterThan(0);
      expect(await (await fetch(`http://127.0.0.1:${port}/`)).text()).toBe("a");
    } finally {
      expect(await child.stop()).toBe(0);
    }
  });

  test("SIGHUP swaps in a new pool live; a bad new config is rejected and the old one keeps serving", async () => {
    const a = make("a");
    const b = make("b");
    const dir = tempDir();
    const file = writeConfig(dir, cfg([a.url]));
    const child = spawnCli(["--config", file]);
    try {
      const port = await child.listening("web");
      expect(await (await fetch(`http://127.0.0.1:${port}/`)).text()).toBe("a");

      writeConfig(dir, cfg([b.url]));
      child.proc.kill("SIGHUP");
      await child.waitFor((l) => l.msg === "config reloaded");
      expect(await (await fetch(`http://127.0.0.1:${port}/`)).text()).toBe("b");

      writeConfig(dir, { ...cfg([a.url]), pools: { app: { backends: [{ id: "x", url: "nope" }] } } });
      child.proc.kill("SIGHUP");
      const rejected = await child.waitFor(
        (l) => l.msg === "reload rejected; the previous config keeps serving",
      );
      expect(JSON.stringify(rejected.problems)).toContain("pools.app.backends[0].url");
      expect(await (await fetch(`http://127.0.0.1:${port}/`)).text()).toBe("b");
    } finally {
      await child.stop();
    }
  });

  test("SIGHUP with a changed listener opens the new one and closes the old one", async () => {
    const a = make("a");
    const dir = tempDir();
    const file = writeConfig(dir, cfg([a.url]));
    const child = spawnCli(["--config", file]);
    try {
      const port = await child.listening("web");
      const changed = cfg([a.url]) as any;
      changed.listeners[0].clientIdleMs = 30_000;
      changed.listeners.push({ name: "second", protocol: "http", address: "127.0.0.1:0", pool: "app" });
      writeConfig(dir, changed);
      child.proc.kill("SIGHUP");
      const second = await child.listening("second");
      await child.waitFor((l) => l.msg === "listener closing" && l.port === port);
      expect(await (await fetch(`http://127.0.0.1:${second}/`)).text()).toBe("a");
      const newWeb = child.lines.filter((l) => l.msg === "listening" && l.name === "web").at(-1);
      expect(await (await fetch(`http://127.0.0.1:${newWeb?.port}/`)).text()).toBe("a");
    } finally {
      await child.stop();
    }
  });

  test("SIGTERM lets an in-flight request finish, then exits 0", async () => {
    const slow = make("slow", async () => {
      await Bun.sleep(800);
      return new Response("finished");
    });
    const file = writeConfig(tempDir(), cfg([slow.url]));
    const child = spawnCli(["--config", file]);
    const port = await child.listening("web");
    const pending = fetch(`http://127.0.0.1:${port}/`).then((r) => r.text());
    await Bun.sleep(200);
    child.proc.kill("SIGTERM");
    expect(await pending).toBe("finished");
    expect(await child.proc.exited).toBe(0);
  });

  test("maxHeaderBytes raises Bun's per-process header limit", async () => {
    // A raw backend, since a Bun.serve backend in this process has the default 16 KiB limit.
    const raw = rawBackend((s) => s.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"));
    const file = writeConfig(tempDir(), cfg([raw.url], { maxHeaderBytes: 65536 }));
    const child = spawnCli(["--config", file]);
    try {
      const port = await child.listening("web");
      const ok = await fetch(`http://127.0.0.1:${port}/`, { headers: { "x-big": "b".repeat(40_000) } });
      expect(ok.status).toBe(200);
      const tooBig = await fetch(`http://127.0.0.1:${port}/`, { headers: { "x-big": "b".repeat(70_000) } });
      expect(tooBig.status).toBe(431);
    } finally {
      raw.stop();
      expect(await child.stop()).toBe(0);
    }
  });

  test("the shipped demo config serves the demo on 8080 and 8443", async () => {
    const child = spawnCli(["--config", "config.json"]);
    try {
      expect(await child.listening("web")).toBe(8080);
      expect(await child.listening("websecure")).toBe(8443);
      const res = await fetch("http://127.0.0.1:8080/");
      const body = (await res.json()) as { backend: string; visits: number };
      expect(body.backend).toMatch(/^app-[123]$/);
      expect(body.visits).toBe(1);
      const tls = Bun.spawn(["curl", "-sk", "https://127.0.0.1:8443/"], { stdout: "pipe" });
      expect(await new Response(tls.stdout).text()).toContain('"backend":"app-');
      expect(child.stderr()).toContain("curl");
    } finally {
      expect(await child.stop()).toBe(0);
    }
  });
});
