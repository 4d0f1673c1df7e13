/**
 * SIGHUP reloads under load, against the real CLI: while 30 cookie-jar
 * clients keep sending, the config is rewritten with harmless changes (a
 * route added, a timeout changed, the retry budget changed) and SIGHUP is
 * sent six times. No request fails and every session keeps its backend,
 * with one thread and with two worker threads. No cookie key is configured:
 * the key generated at start must survive the reloads.
 *
 * A change to a listener's own settings (clientIdleMs here) makes each reload
 * open a new listener on the same port and close the old one. Closing a
 * SO_REUSEPORT listener resets the connections queued on it (about 20 requests
 * per run with two workers, measured) unless net.ipv4.tcp_migrate_req hands
 * them to another listener: tether turns it on at start. Where it cannot
 * (not root, /proc/sys read-only, Linux before 5.14) the two-worker case is skipped.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { accessSync, constants, readFileSync } from "node:fs";
import { dirname } from "node:path";
import { MIGRATE_REQ } from "../../src/server/reuseport-migration.ts";
import { closedPort } from "../support/backends.ts";
import { tempDir, writeConfig } from "../support/files.ts";
import { type Child, spawnCli } from "../support/tether.ts";
import {
  backendRuns,
  describe as describeSamples,
  type ProcBackend,
  procBackend,
  runClients,
} from "./support.ts";

const RELOADS = 6;

interface Case {
  workers: number;
  /** Change the listener's clientIdleMs too, so every reload reopens the listener. */
  reopen: boolean;
  /** A fixed port (a reopened listener binds the same port again; port 0 would pick a new one). */
  port: number;
  /** The listener's front end (default: tether's own). */
  engine?: "bun";
  /** Appended to the case's name. */
  suffix: string;
}

function configFor(backends: ProcBackend[], c: Case, generation: number) {
  const routes = Array.from({ length: generation % 3 }, (_, i) => ({
    pathPrefix: `/extra-${generation}-${i}/`,
    pool: "app",
  }));
  return {
    listeners: [
      {
        name: "web",
        protocol: "http",
        address: `127.0.0.1:${c.port}`,
        pool: "app",
        routes,
        ...(c.reopen ? { clientIdleMs: 30_000 + generation * 1000 } : {}),
        ...(c.engine ? { engine: c.engine } : {}),
      },
    ],
    pools: {
      app: {
        backends: backends.map((b) => ({ id: b.name, url: b.url })),
        persistence: [{ type: "cookie", mode: "insert", name: "TETHER" }],
        responseTimeoutMs: 30_000 + generation * 1000,
        retries: 2 + (generation % 2),
      },
    },
    workers: c.workers,
    snapshot: false,
  };
}

let backends: ProcBackend[] = [];
beforeAll(async () => {
  backends = await Promise.all(["b1", "b2", "b3"].map((n) => procBackend(n)));
});
afterAll(async () => {
  await Promise.all(backends.map((b) => b.stop()));
});

/** Whether tether can have net.ipv4.tcp_migrate_req on: it is already, or this process may set it. */
function migrationPossible(): boolean {
  try {
    if (readFileSync(MIGRATE_REQ, "utf8").trim() === "1") return true;
    accessSync(MIGRATE_REQ, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}
const noMigration = migrationPossible()
  ? undefined
  : "net.ipv4.tcp_migrate_req is off and cannot be set here";

const cases: (Case & { skip?: string })[] = [
  { workers: 0, reopen: false, port: 0, suffix: "" },
  { workers: 2, reopen: false, port: 0, suffix: "" },
  // One thread has passed without the migration too: its accept queue is short at the moment it closes.
  { workers: 0, reopen: true, port: closedPort(), suffix: "" },
  { workers: 2, reopen: true, port: closedPort(), skip: noMigration, suffix: "" },
  {
    workers: 2,
    reopen: true,
    port: closedPort(),
    skip: noMigration,
    engine: "bun",
    suffix: " (engine bun)",
  },
];

const named = cases.map((c) => ({
  ...c,
  name: `workers: ${c.workers}, listener reopened: ${c.reopen}${c.suffix}`,
}));

describe.each(named)("$name", (c) => {
  const workers = c.workers;
  let child: Child;
  let file = "";
  let port = 0;

  beforeAll(async () => {
    if (c.skip) return;
    const dir = tempDir();
    file = writeConfig(dir, configFor(backends, c, 0));
    child = spawnCli(["--config", file]);
    port =
      workers === 0
        ? await child.listening("web")
        : Number(
            (
              await child.waitFor(
                (l) => l.msg === "listening" && l.name === "web" && l.workers === workers,
                15_000,
              )
            ).port,
          );
  });
  afterAll(async () => {
    await child?.stop();
  });

  test.skipIf(Boolean(c.skip))(
    "six SIGHUP reloads while 30 clients send: no failed request, no session moves",
    async () => {
      const reloaded = () => child.lines.filter((l) => l.msg === "config reloaded").length;
      const run = runClients({
        url: `http://127.0.0.1:${port}`,
        clients: 30,
        durationMs: 3500,
        path: (client, n) => `/c${client}/r${n}?delay=${n % 3}`,
      });
      await Bun.sleep(300);
      for (let generation = 1; generation <= RELOADS; generation++) {
        writeConfig(dirname(file), configFor(backends, c, generation));
        child.proc.kill("SIGHUP");
        await child.waitFor(() => reloaded() >= generation, 5000);
        await Bun.sleep(250);
      }
      const samples = await run;
      if (c.reopen && workers > 0) {
        // The real path: the kernel migrated the old listeners' queues (tether turned this on at start).
        expect(readFileSync(MIGRATE_REQ, "utf8").trim()).toBe("1");
        expect(
          child.lines.filter((l) => String(l.msg).includes("tcp_migrate_req") && l.level === "warn"),
        ).toEqual([]);
      }

      expect(reloaded()).toBe(RELOADS);
      const problems = child.lines.filter(
        (l) => l.level === "error" || /reload (failed|rejected)/.test(String(l.msg)),
      );
      expect(problems).toEqual([]);
      const failed = samples.filter((s) => s.status !== 200 || s.error !== null);
      expect(failed, describeSamples(failed)).toEqual([]);
      expect(samples.length).toBeGreaterThan(500);
      // Sessions: one backend per client for the whole run, and no second cookie was ever needed.
      for (const [c, r] of backendRuns(samples)) expect(r, `client ${c}`).toHaveLength(1);
      expect(samples.filter((s) => s.newCookie && s.seq > 0)).toEqual([]);
    },
  );
});
