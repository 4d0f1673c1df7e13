/**
 * A backend that stops answering (SIGSTOP: the kernel still accepts its
 * connections, the process reads nothing) while 30 cookie-jar clients keep
 * sending. Its clients get 504 after responseTimeoutMs, never a hang, and
 * move once passive health marks it down; every other client keeps getting
 * 2xx at normal latency. Clients that give up waiting do not count against
 * a backend.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { ConfigInput } from "../../src/config/schema.ts";
import {
  backendRuns,
  describe as describeSamples,
  type InProcess,
  KEY,
  type ProcBackend,
  percentile,
  procBackend,
  runClients,
  startWithAudit,
} from "./support.ts";

const RESPONSE_TIMEOUT_MS = 800;
let backends: ProcBackend[] = [];
let t: InProcess;

beforeAll(async () => {
  backends = await Promise.all(["b1", "b2", "b3"].map((n) => procBackend(n)));
  t = startWithAudit({
    listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
    pools: {
      app: {
        backends: backends.map((b) => ({ id: b.name, url: b.url })),
        persistence: [{ type: "cookie", mode: "insert", name: "TETHER" }],
        connectTimeoutMs: 1000,
        responseTimeoutMs: RESPONSE_TIMEOUT_MS,
      },
    },
    secrets: { cookieKeys: [KEY] },
  } as ConfigInput);
});

afterAll(async () => {
  await t?.stop();
  await Promise.all(backends.map((b) => b.stop()));
});

test("a stalled backend's clients get 504 after responseTimeoutMs; everyone else is unaffected", async () => {
  const stalled = backends[0] as ProcBackend;
  const run = runClients({
    url: t.url(),
    clients: 30,
    durationMs: 3500,
    maxRequestMs: RESPONSE_TIMEOUT_MS + 3000,
    path: (c, n) => `/c${c}/r${n}?delay=1`,
  });
  await Bun.sleep(800);
  const frozenAt = performance.now();
  stalled.freeze();
  const samples = await run;
  stalled.thaw();

  const runs = backendRuns(samples);
  const home = new Map([...runs].map(([c, r]) => [c, r[0] as string]));
  const ofStalled = (c: number) => home.get(c) === stalled.name;
  expect(new Set(home.values()).size).toBe(3);

  // Nothing hung, and the only failures are 504s of the stalled backend's clients, after the timeout.
  const hung = samples.filter((s) => s.error !== null);
  expect(hung, describeSamples(hung)).toEqual([]);
  const failed = samples.filter((s) => s.status !== 200);
  expect(failed.length).toBeGreaterThan(0);
  for (const s of failed) {
    expect(s.status, describeSamples([s])).toBe(504);
    expect(ofStalled(s.client)).toBe(true);
    expect(s.start).toBeGreaterThan(frozenAt - 50);
    expect(s.end - s.start).toBeGreaterThanOrEqual(RESPONSE_TIMEOUT_MS - 20);
    expect(s.end - s.start).toBeLessThan(RESPONSE_TIMEOUT_MS + 1000);
  }

  // Other clients: all 2xx, on their own backend, at normal latency.
  const others = samples.filter((s) => !ofStalled(s.client));
  expect(others.every((s) => s.status === 200)).toBe(true);
  for (const [c, r] of runs) if (!ofStalled(c)) expect(r).toEqual([home.get(c) as string]);
  const latency = others.filter((s) => s.start > frozenAt).map((s) => s.end - s.start);
  expect(latency.length).toBeGreaterThan(500);
  // "Normal": far below the stall (a few ms here; the bounds leave room for a busy machine).
  expect(percentile(latency, 99)).toBeLessThan(200);
  expect(Math.max(...latency)).toBeLessThan(500);

  // Once passive checks mark it down, the stalled backend's clients move once and are served again.
  for (const [c, r] of runs) {
    if (!ofStalled(c)) continue;
    expect(r.length).toBe(2);
    const last = samples.filter((s) => s.client === c).at(-1);
    expect(last?.status).toBe(200);
  }
  expect(t.log.lines.some((l) => l.msg === "backend down" && l.backend === stalled.name)).toBe(true);
});

test("clients that give up waiting do not mark a backend down", async () => {
  const slow = backends[1] as ProcBackend;
  const down = () => t.log.lines.filter((l) => l.msg === "backend down" && l.backend === slow.name).length;
  const before = down();
  // Five clients (more than maxFails) pinned to one backend hang up while it is still working.
  let cookie = "";
  for (let i = 0; i < 50 && !cookie; i++) {
    const res = await fetch(`${t.url()}/`);
    if (res.headers.get("x-backend") === slow.name)
      cookie = (res.headers.getSetCookie()[0] ?? "").split(";")[0] as string;
  }
  expect(cookie).not.toBe("");
  const given = await Promise.all(
    Array.from({ length: 5 }, () =>
      fetch(`${t.url()}/give-up?delay=500`, { headers: { cookie }, signal: AbortSignal.timeout(100) }).then(
        () => "answered",
        (e: Error) => e.name,
      ),
    ),
  );
  expect(given).toEqual(Array(5).fill("TimeoutError"));
  await Bun.sleep(600);
  expect(down()).toBe(before);
  const again = await fetch(`${t.url()}/`, { headers: { cookie } });
  expect(again.status).toBe(200);
  expect(again.headers.get("x-backend")).toBe(slow.name);
});
