/**
 * A worker thread that crashes under load ("workers": 2, the real CLI). How
 * it is crashed: see crash-worker.preload.ts (an uncaught error inside the
 * worker, triggered from a test-side preload; src has no crash hook). Only
 * requests that the dead worker held fail; the other worker's requests all
 * succeed; sessions keep their backends (the respawned worker gets the
 * primary's cookie key); and the worker comes back ("worker exited;
 * respawning", then "worker ready") and serves again.
 *
 * Each request uses a new connection (Connection: close), so the kernel
 * spreads requests over both workers; the access log tells which worker
 * answered which request (paths are unique per request).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import { REPO, tempDir, writeConfig } from "../support/files.ts";
import { type Child, spawnCli, workersListening } from "../support/tether.ts";
import {
  backendRuns,
  describe as describeSamples,
  type ProcBackend,
  procBackend,
  runClients,
} from "./support.ts";

const DELAY_MS = 150;

let backends: ProcBackend[] = [];
let child: Child;
let port = 0;

beforeAll(async () => {
  backends = await Promise.all(["b1", "b2", "b3"].map((n) => procBackend(n)));
  const file = writeConfig(tempDir(), {
    listeners: [{ name: "web", protocol: "http", address: "127.0.0.1:0", pool: "app" }],
    pools: {
      app: {
        backends: backends.map((b) => ({ id: b.name, url: b.url })),
        persistence: [{ type: "cookie", mode: "insert", name: "TETHER" }],
      },
    },
    workers: 2,
    accessLog: true,
    snapshot: false,
  });
  child = spawnCli(["--config", file], {}, ["--preload", join(REPO, "test/faults/crash-worker.preload.ts")]);
  port = await workersListening(child);
});

afterAll(async () => {
  await child?.stop();
  await Promise.all(backends.map((b) => b.stop()));
});

/** performance.now() of a log line's ISO time. */
const at = (line: Record<string, unknown>) => Date.parse(String(line.time)) - performance.timeOrigin;

test("a crashed worker fails only its own requests, sessions stay, and it comes back", async () => {
  const run = runClients({
    url: `http://127.0.0.1:${port}`,
    clients: 30,
    durationMs: 3500,
    headers: { connection: "close" },
    path: (c, n) => `/c${c}/r${n}?delay=${DELAY_MS}`,
  });
  await Bun.sleep(1000);
  const crashAt = performance.now();
  child.proc.kill("SIGUSR2");
  const exited = await child.waitFor((l) => l.msg === "worker exited; respawning" && l.worker === 0, 5000);
  const back = await child.waitFor(
    (l) => l.msg === "worker ready" && l.worker === 0 && at(l) > at(exited),
    5000,
  );
  const samples = await run;

  // It really crashed: requests were lost, and all of them were in flight at the crash.
  const failed = samples.filter((s) => s.status !== 200 || s.error !== null);
  expect(failed.length).toBeGreaterThan(0);
  for (const s of failed) {
    expect(s.status, describeSamples([s])).toBe(0);
    expect(s.start, describeSamples([s])).toBeLessThan(at(exited) + 50);
    expect(s.end, describeSamples([s])).toBeGreaterThan(crashAt);
  }
  // ...and none of them was one the surviving worker had: it answered everything it took.
  const servedBy = new Map<string, string>();
  for (const l of child.lines) if (l.msg === "request") servedBy.set(String(l.path), String(l.worker));
  for (const s of failed) expect(servedBy.get(s.path.split("?")[0] as string)).toBeUndefined();
  const survivor = samples.filter((s) => servedBy.get(s.path.split("?")[0] as string) === "1");
  expect(survivor.length).toBeGreaterThan(50);
  expect(survivor.every((s) => s.status === 200 && s.error === null)).toBe(true);
  // At most the requests that were in flight at the crash failed.
  const inFlight = samples.filter((s) => s.start <= at(exited) && s.end >= crashAt).length;
  expect(failed.length).toBeLessThanOrEqual(inFlight);

  // After the respawn every request succeeded, and the new worker 0 served some of them.
  const after = samples.filter((s) => s.start > at(back) + 50);
  expect(after.length).toBeGreaterThan(50);
  expect(after.filter((s) => s.status !== 200 || s.error !== null)).toEqual([]);
  const byNewWorker = child.lines.filter((l) => l.msg === "request" && l.worker === "0" && at(l) > at(back));
  expect(byNewWorker.length).toBeGreaterThan(0);

  // Sessions: each client stayed on one backend, and only its first answered request set a cookie.
  for (const [c, r] of backendRuns(samples)) expect(r, `client ${c}`).toHaveLength(1);
  for (let c = 0; c < 30; c++) {
    const answered = samples.filter((s) => s.client === c && s.status === 200);
    expect(answered.slice(1).filter((s) => s.newCookie)).toEqual([]);
  }
});
