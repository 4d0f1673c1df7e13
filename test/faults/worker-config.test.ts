/**
 * Worker threads run exactly the primary's config ("workers": 2, the real
 * CLI). A worker respawned after the file was edited (no SIGHUP) runs what
 * its siblings run, cookie key included; a file that has become invalid does
 * not leave its slot dead; and a reload that the workers cannot prepare
 * leaves every thread, the primary included, on the previous config, and the
 * log says so. Workers are crashed as in worker-crash.test.ts (see
 * crash-worker.preload.ts).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { decodeConfig, encodeConfig } from "../../src/config/load.ts";
import { backend, rawRequest, type TestBackend } from "../support/backends.ts";
import { makeCert } from "../support/certs.ts";
import { REPO, tempDir, writeConfig } from "../support/files.ts";
import { type Child, config, spawnCli, workersListening } from "../support/tether.ts";

const KEY1 = Buffer.alloc(32, 1).toString("base64");
const KEY2 = Buffer.alloc(32, 2).toString("base64");
const TOKEN = "worker-config-token";

const backends: TestBackend[] = ["b1", "b2", "b3"].map((n) => backend(n));
afterAll(() => {
  for (const b of backends) b.stop();
});

function configFor(opts: { key?: string; ids?: string[]; clientIdleMs?: number; extraPort?: number } = {}) {
  const ids = opts.ids ?? ["b1", "b2", "b3"];
  return {
    listeners: [
      {
        name: "web",
        protocol: "http",
        address: "127.0.0.1:0",
        pool: "app",
        ...(opts.clientIdleMs ? { clientIdleMs: opts.clientIdleMs } : {}),
      },
      ...(opts.extraPort
        ? [{ name: "extra", protocol: "http", address: `127.0.0.1:${opts.extraPort}`, pool: "app" }]
        : []),
    ],
    pools: {
      app: {
        backends: backends.map((b, i) => ({ id: ids[i], url: b.url })),
        persistence: [{ type: "cookie", mode: "insert", name: "TETHER" }],
      },
    },
    secrets: { cookieKeys: [opts.key ?? KEY1] },
    admin: { address: "127.0.0.1:0", token: TOKEN },
    workers: 2,
    accessLog: true,
    snapshot: false,
  };
}

async function start(dir: string): Promise<{ child: Child; port: number; adminPort: number }> {
  const file = writeConfig(dir, configFor());
  const child = spawnCli(["--config", file], {}, [
    "--preload",
    join(REPO, "test/faults/crash-worker.preload.ts"),
  ]);
  const adminPort = await child.listening("admin");
  const port = await workersListening(child);
  return { child, port, adminPort };
}

/** Crashes worker 0 and resolves once its replacement is ready. */
async function crashWorker0(child: Child): Promise<void> {
  const before = child.lines.length;
  child.proc.kill("SIGUSR2");
  await child.waitFor((l) => l.msg === "worker exited; respawning" && l.worker === 0, 5000);
  await child.waitFor(
    (l) => l.msg === "worker ready" && l.worker === 0 && child.lines.indexOf(l) > before,
    20_000,
  );
}

interface Answer {
  path: string;
  backend: string | null;
  cookie: string | null;
}

/** A request on a fresh connection (the kernel picks the worker). */
async function get(port: number, path: string, cookie?: string): Promise<Answer> {
  const raw = await rawRequest(
    port,
    `GET ${path} HTTP/1.1\r\nHost: x\r\n${cookie ? `Cookie: ${cookie}\r\n` : ""}Connection: close\r\n\r\n`,
  );
  return {
    path,
    backend: /x-backend: (\w+)/i.exec(raw)?.[1] ?? null,
    cookie: /set-cookie: (TETHER=[^;\r\n]+)/i.exec(raw)?.[1] ?? null,
  };
}

const workerOf = (child: Child, path: string) =>
  child.lines.find((l) => l.msg === "request" && l.path === path)?.worker;

test("a resolved config survives the trip to a worker exactly (keys as Buffers, PEM text, every field)", async () => {
  const dir = tempDir();
  const pem = await makeCert(dir, "localhost");
  const c = config({
    ...configFor(),
    listeners: [
      {
        name: "tls",
        protocol: "https",
        address: "127.0.0.1:0",
        pool: "app",
        tls: { certificates: [pem] },
      },
    ],
  } as never);
  const back = decodeConfig(encodeConfig(c));
  expect(back).toStrictEqual(c);
  expect(back.secrets.cookieKeys?.[0]).toBeInstanceOf(Buffer);
});

describe("workers: 2, the config file edited without SIGHUP", () => {
  let child: Child;
  afterAll(async () => {
    await child?.stop();
  });

  test("a respawned worker runs its siblings' config: the cookies each worker issues open on the other", async () => {
    const dir = tempDir();
    const s = await start(dir);
    child = s.child;
    writeConfig(dir, configFor({ key: KEY2, ids: ["x1", "x2", "x3"] }));
    await crashWorker0(child);

    const issued = await Promise.all(Array.from({ length: 30 }, (_, i) => get(s.port, `/issue/${i}`)));
    const by = (w: string) => issued.filter((a) => workerOf(child, a.path) === w);
    expect(by("0").length).toBeGreaterThan(0);
    expect(by("1").length).toBeGreaterThan(0);
    expect(issued.every((a) => a.cookie !== null && a.backend !== null)).toBe(true);

    const replays = await Promise.all(
      issued.flatMap((a, i) =>
        Array.from({ length: 6 }, (_, n) =>
          get(s.port, `/replay/${i}/${n}`, a.cookie as string).then((r) => ({ ...r, home: a.backend })),
        ),
      ),
    );
    expect(new Set(replays.map((r) => workerOf(child, r.path)))).toEqual(new Set(["0", "1"]));
    expect(replays.filter((r) => r.cookie !== null || r.backend !== r.home)).toEqual([]);
  });
});

describe("workers: 2, the config file made invalid without SIGHUP", () => {
  let child: Child;
  afterAll(async () => {
    await child?.stop();
  });

  test("a crashed worker comes back and serves", async () => {
    const dir = tempDir();
    const s = await start(dir);
    child = s.child;
    writeFileSync(join(dir, "config.json"), "{ not json");
    await crashWorker0(child);
    for (let i = 0; i < 100 && !child.lines.some((l) => l.msg === "request" && l.worker === "0"); i++) {
      await Bun.sleep(i === 0 ? 0 : 10);
      expect((await get(s.port, `/after/${i}`)).backend).not.toBeNull();
    }
    expect(child.lines.some((l) => l.msg === "request" && l.worker === "0")).toBe(true);
  });
});

describe("workers: 2, a reload the workers cannot prepare", () => {
  let child: Child;
  afterAll(async () => {
    await child?.stop();
  });

  test("every thread keeps the previous config, the log says so, and the next good reload applies", async () => {
    const dir = tempDir();
    const s = await start(dir);
    child = s.child;
    const ids = async () => {
      const res = await fetch(`http://127.0.0.1:${s.adminPort}/api/backends`, {
        headers: { authorization: `Bearer ${TOKEN}` },
      });
      return ((await res.json()) as { backends: { id: string }[] }).backends.map((b) => b.id).sort();
    };
    // A port held without SO_REUSEPORT: no worker can bind it.
    const held = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    try {
      // web's own settings change too, so each worker opens a new web listener before it fails on extra.
      writeConfig(dir, configFor({ ids: ["n1", "n2", "n3"], clientIdleMs: 31_000, extraPort: held.port }));
      child.proc.kill("SIGHUP");
      const failed = await child.waitFor((l) => String(l.msg).startsWith("reload failed"));
      expect(failed.msg).toBe("reload failed; the previous config keeps serving");
      expect(String(failed.error)).toContain("worker 0");
      expect(String(failed.error)).toContain("worker 1");
      expect(child.lines.filter((l) => l.msg === "config reloaded")).toEqual([]);
      expect(await ids()).toEqual(["b1", "b2", "b3"]);
      const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => get(s.port, `/kept/${i}`)));
      expect(answers.every((a) => a.backend !== null)).toBe(true);
    } finally {
      held.stop(true);
    }

    writeConfig(dir, configFor({ ids: ["n1", "n2", "n3"] }));
    child.proc.kill("SIGHUP");
    await child.waitFor((l) => l.msg === "config reloaded");
    expect(await ids()).toEqual(["n1", "n2", "n3"]);
  });
});
