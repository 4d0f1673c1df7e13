/**
 * Soak test: the real CLI under mixed sticky traffic for N minutes, with
 * backend restarts and SIGHUP reloads along the way. Not run in CI.
 *
 *   bun bench/soak.ts [--minutes 10] [--clients 32] [--restart-every S] [--reload-every S]
 *
 * - tether: `bun src/main.ts --config <tmp>/config.json` (one thread, cookie
 *   insert persistence, no cookie key: the generated one must survive reloads).
 * - backends: 3 processes (test/faults/backend-proc.ts); every --restart-every
 *   seconds the next one is killed (SIGKILL) and started again on its port 2 s later.
 * - reloads: every --reload-every seconds the config is rewritten (a timeout
 *   and a route change) and tether gets SIGHUP.
 * - clients: each with its own cookie jar, sending GETs (small and 16 KiB
 *   bodies) and small POSTs back to back; now and then a client drops its jar
 *   and starts as a new user.
 *
 * It samples tether's RSS (VmRSS of its process tree) once a second and
 * reports requests, errors (GET and POST apart: a POST cut by a backend kill
 * may fail by design, since it is never sent twice), sessions moved (a
 * session answered by a different backend than before; "after a restart"
 * when its previous backend had been killed), reloads and RSS over time. It
 * writes bench/results/soak-<timestamp>.svg (polylines, lib/svg.ts) and
 * .json, and prints PASS when RSS after warm-up (the first fifth, at least
 * 10 s) grew by at most 10% by the end (median of the last tenth against the
 * median of the tenth right after warm-up), FAIL otherwise.
 *
 * Only 127.0.0.1 is used. Every process started here is stopped at the end,
 * on errors and on Ctrl-C.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { type ProcBackend, procBackend } from "../test/faults/support.ts";
import { tempDir } from "../test/support/files.ts";
import { type Child, spawnCli } from "../test/support/tether.ts";
import { processTree, rssKiB } from "./lib/procs.ts";
import { el, escapeXml, num, svgDocument, text } from "./lib/svg.ts";

const REPO = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

const { values } = parseArgs({
  options: {
    minutes: { type: "string", default: "10" },
    clients: { type: "string", default: "32" },
    "restart-every": { type: "string" },
    "reload-every": { type: "string" },
    help: { type: "boolean", default: false },
  },
});
if (values.help) {
  console.log(
    "usage: bun bench/soak.ts [--minutes 10] [--clients 32] [--restart-every SECONDS] [--reload-every SECONDS]",
  );
  process.exit(0);
}
const minutes = Number(values.minutes);
const clients = Number(values.clients);
if (!(minutes > 0) || !Number.isInteger(clients) || clients < 1)
  throw new Error("bad --minutes or --clients");
const durationMs = minutes * 60_000;
const restartEveryMs = 1000 * Number(values["restart-every"] ?? Math.min(60, Math.max(10, minutes * 6)));
const reloadEveryMs = 1000 * Number(values["reload-every"] ?? Math.min(30, Math.max(5, minutes * 3)));
const warmupMs = Math.max(10_000, durationMs / 5);
const RSS_LIMIT = 0.1;

// --- processes -------------------------------------------------------------------------------

let tether: Child | null = null;
let backends: ProcBackend[] = [];
const cleanup = async () => {
  await tether?.stop();
  await Promise.all(backends.map((b) => b.stop()));
};
process.on("SIGINT", () => {
  void cleanup().then(() => process.exit(130));
});

const dir = tempDir("tether-soak-");
const configFile = join(dir, "config.json");
function writeConfig(generation: number): void {
  const config = {
    listeners: [
      {
        name: "web",
        protocol: "http",
        address: "127.0.0.1:0",
        pool: "app",
        routes: generation % 2 ? [{ pathPrefix: `/gen-${generation}/`, pool: "app" }] : [],
      },
    ],
    pools: {
      app: {
        backends: backends.map((b) => ({ id: b.name, url: b.url })),
        persistence: [{ type: "cookie", mode: "insert", name: "TETHER" }],
        connectTimeoutMs: 1000,
        responseTimeoutMs: 30_000 + generation,
        failTimeoutMs: 5000,
      },
    },
    snapshot: false,
  };
  writeFileSync(configFile, JSON.stringify(config, null, 2));
}

// --- traffic ---------------------------------------------------------------------------------

interface Second {
  t: number;
  requests: number;
  getErrors: number;
  postErrors: number;
  rssKiB: number;
}
const seconds: Second[] = [];
const events: { t: number; kind: "restart" | "reload"; detail: string }[] = [];
const totals = { requests: 0, getErrors: 0, postErrors: 0, sessions: 0, moved: 0, movedAfterRestart: 0 };
const errorKinds = new Map<string, number>();
/** When each backend was last killed (ms since start). */
const killedAt = new Map<string, number>();
let current: Second = { t: 0, requests: 0, getErrors: 0, postErrors: 0, rssKiB: 0 };
const t0 = performance.now();
const now = () => performance.now() - t0;

async function client(id: number, url: string, until: number): Promise<void> {
  let jar = "";
  let home: string | null = null;
  for (let n = 0; now() < until; n++) {
    // About one request in 300 starts a new user.
    if (Math.random() < 1 / 300) {
      jar = "";
      home = null;
    }
    const r = Math.random();
    const post = r < 0.15;
    const path = r < 0.3 && !post ? `/c${id}/r${n}?bytes=16384` : `/c${id}/r${n}`;
    let failed = false;
    try {
      const res = await fetch(`${url}${path}`, {
        method: post ? "POST" : "GET",
        headers: jar ? { cookie: jar } : {},
        ...(post ? { body: "x".repeat(1024) } : {}),
        signal: AbortSignal.timeout(10_000),
      });
      const setCookie = res.headers.getSetCookie()[0];
      if (setCookie) {
        if (!jar) totals.sessions++;
        jar = setCookie.split(";")[0] as string;
      }
      await res.arrayBuffer();
      const backend = res.headers.get("x-backend");
      if (res.status !== 200) {
        failed = true;
        errorKinds.set(`status ${res.status}`, (errorKinds.get(`status ${res.status}`) ?? 0) + 1);
      } else if (home !== null && backend !== home) {
        totals.moved++;
        const killed = killedAt.get(home);
        if (killed !== undefined && now() - killed < restartEveryMs) totals.movedAfterRestart++;
      }
      if (backend) home = backend;
    } catch (e) {
      failed = true;
      const kind = e instanceof Error ? e.name : "error";
      errorKinds.set(kind, (errorKinds.get(kind) ?? 0) + 1);
    }
    totals.requests++;
    current.requests++;
    if (failed) {
      if (post) {
        totals.postErrors++;
        current.postErrors++;
      } else {
        totals.getErrors++;
        current.getErrors++;
      }
    }
  }
}

// --- run -------------------------------------------------------------------------------------

function tetherRss(): number {
  const pid = tether?.proc.pid;
  return pid ? processTree(pid).reduce((sum, p) => sum + rssKiB(p), 0) : 0;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s[s.length >> 1] as number) : 0;
};

async function main(): Promise<void> {
  backends = await Promise.all(["s1", "s2", "s3"].map((n) => procBackend(n)));
  let generation = 0;
  writeConfig(generation);
  tether = spawnCli(["--config", configFile]);
  const port = await tether.listening("web", 15_000);
  const url = `http://127.0.0.1:${port}`;
  console.error(
    `soak: ${minutes} min, ${clients} clients, restart every ${restartEveryMs / 1000} s, reload every ${reloadEveryMs / 1000} s, tether pid ${tether.proc.pid}`,
  );

  const until = durationMs;
  const sampler = setInterval(() => {
    current.rssKiB = tetherRss();
    current.t = Math.round(now() / 1000);
    seconds.push(current);
    if (current.t % 10 === 0)
      console.error(
        `  ${current.t}s: ${current.requests} req/s, RSS ${(current.rssKiB / 1024).toFixed(1)} MiB, errors ${totals.getErrors + totals.postErrors}`,
      );
    current = { t: 0, requests: 0, getErrors: 0, postErrors: 0, rssKiB: 0 };
  }, 1000);

  let restartIndex = 0;
  const restarts = (async () => {
    for (let next = restartEveryMs; next < until - 3000; next += restartEveryMs) {
      await Bun.sleep(Math.max(0, next - now()));
      const b = backends[restartIndex++ % backends.length] as ProcBackend;
      killedAt.set(b.name, now());
      events.push({ t: now(), kind: "restart", detail: b.name });
      await b.kill();
      await Bun.sleep(2000);
      await b.restart();
    }
  })();
  let reloadsDone = 0;
  const reloads = (async () => {
    for (let next = reloadEveryMs; next < until - 1000; next += reloadEveryMs) {
      await Bun.sleep(Math.max(0, next - now()));
      generation++;
      writeConfig(generation);
      events.push({ t: now(), kind: "reload", detail: `generation ${generation}` });
      const before = (tether as Child).lines.filter((l) => l.msg === "config reloaded").length;
      (tether as Child).proc.kill("SIGHUP");
      await (tether as Child)
        .waitFor(
          () => (tether as Child).lines.filter((l) => l.msg === "config reloaded").length > before,
          10_000,
        )
        .then(() => reloadsDone++)
        .catch(() => console.error(`  reload ${generation} not confirmed within 10 s`));
    }
  })();

  await Promise.all([...Array.from({ length: clients }, (_, i) => client(i, url, until)), restarts, reloads]);
  clearInterval(sampler);
  const tetherErrors = (tether as Child).lines.filter((l) => l.level === "error");
  await cleanup();

  // --- verdict -------------------------------------------------------------------------------
  const afterWarmup = seconds.filter((s) => s.t * 1000 > warmupMs);
  const tenth = Math.max(1, Math.round(afterWarmup.length / 10));
  const baseline = median(afterWarmup.slice(0, tenth).map((s) => s.rssKiB));
  const final = median(afterWarmup.slice(-tenth).map((s) => s.rssKiB));
  const growth = baseline ? (final - baseline) / baseline : 0;
  const pass = afterWarmup.length > 0 && growth <= RSS_LIMIT;
  const rss = seconds.map((s) => s.rssKiB);
  const summary = {
    minutes,
    clients,
    restartEveryS: restartEveryMs / 1000,
    reloadEveryS: reloadEveryMs / 1000,
    requests: totals.requests,
    requestsPerSecond: Math.round(totals.requests / (durationMs / 1000)),
    errors: { get: totals.getErrors, post: totals.postErrors, kinds: Object.fromEntries(errorKinds) },
    sessionsCreated: totals.sessions,
    sessionsMoved: totals.moved,
    sessionsMovedAfterRestart: totals.movedAfterRestart,
    backendRestarts: events.filter((e) => e.kind === "restart").length,
    reloads: { sent: events.filter((e) => e.kind === "reload").length, confirmed: reloadsDone },
    tetherErrorLines: tetherErrors.length,
    rssMiB: {
      start: (rss[0] ?? 0) / 1024,
      afterWarmup: baseline / 1024,
      end: final / 1024,
      max: Math.max(...rss) / 1024,
    },
    rssGrowthAfterWarmup: growth,
    rssLimit: RSS_LIMIT,
    verdict: pass ? "PASS" : "FAIL",
  };

  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  const outDir = join(REPO, "bench/results");
  mkdirSync(outDir, { recursive: true });
  const svgFile = join(outDir, `soak-${stamp}.svg`);
  const jsonFile = join(outDir, `soak-${stamp}.json`);
  writeFileSync(svgFile, svg(seconds, events, summary.rssMiB.afterWarmup, warmupMs / 1000));
  writeFileSync(jsonFile, `${JSON.stringify({ summary, events, seconds, bun: Bun.version }, null, 2)}\n`);

  const f = (n: number) => n.toFixed(1);
  console.log(`soak: ${minutes} min, ${clients} clients, bun ${Bun.version}`);
  console.log(
    `  requests   ${totals.requests} (${summary.requestsPerSecond}/s); errors: GET ${totals.getErrors}, POST ${totals.postErrors}${errorKinds.size ? ` (${[...errorKinds].map(([k, v]) => `${k}: ${v}`).join(", ")})` : ""}`,
  );
  console.log(
    `  sessions   ${totals.sessions} created, ${totals.moved} moved (${totals.movedAfterRestart} after a restart of their backend)`,
  );
  console.log(
    `  faults     ${summary.backendRestarts} backend restarts, ${summary.reloads.sent} reloads (${reloadsDone} confirmed); tether error lines: ${tetherErrors.length}`,
  );
  console.log(
    `  tether RSS ${f(summary.rssMiB.start)} MiB at start, ${f(summary.rssMiB.afterWarmup)} after warm-up (${warmupMs / 1000} s), ${f(summary.rssMiB.end)} at the end, max ${f(summary.rssMiB.max)}`,
  );
  console.log(
    `  RSS growth after warm-up ${(growth * 100).toFixed(1)}% (limit ${RSS_LIMIT * 100}%): ${summary.verdict}`,
  );
  console.log(`  wrote ${svgFile}\n        ${jsonFile}`);
  console.log(summary.verdict);
  process.exit(pass ? 0 : 1);
}

// --- the plot --------------------------------------------------------------------------------

/** RSS (MiB, left axis) and requests/s (right axis) over time, with restarts and reloads marked. */
function svg(data: Second[], marks: typeof events, baselineMiB: number, warmupS: number): string {
  const W = 960;
  const H = 420;
  const m = { l: 64, r: 64, t: 40, b: 48 };
  const pw = W - m.l - m.r;
  const ph = H - m.t - m.b;
  const tMax = Math.max(1, ...data.map((d) => d.t));
  const rssMax = Math.max(1, ...data.map((d) => d.rssKiB / 1024)) * 1.15;
  const rpsMax = Math.max(1, ...data.map((d) => d.requests)) * 1.15;
  const x = (t: number) => m.l + (t / tMax) * pw;
  const yRss = (v: number) => m.t + ph - (v / rssMax) * ph;
  const yRps = (v: number) => m.t + ph - (v / rpsMax) * ph;
  const line = (pts: [number, number][], stroke: string, width: number) =>
    el("polyline", {
      fill: "none",
      stroke,
      "stroke-width": width,
      points: pts.map(([px, py]) => `${num(px)},${num(py)}`).join(" "),
    });
  const out: string[] = [
    text(m.l, 20, "tether soak: RSS (MiB, blue) and requests/s (grey); red: backend restart, green: reload", {
      "font-size": 14,
    }),
    el("rect", {
      x: m.l,
      y: m.t,
      width: (Math.min(warmupS, tMax) / tMax) * pw,
      height: ph,
      fill: "#f3f3f3",
    }),
    text(m.l + 4, m.t + 14, "warm-up", { fill: "#888" }),
  ];
  const middle = { "dominant-baseline": "middle" };
  for (let i = 0; i <= 5; i++) {
    const v = (rssMax / 5) * i;
    const r = (rpsMax / 5) * i;
    out.push(
      el("line", { x1: m.l, x2: W - m.r, y1: yRss(v), y2: yRss(v), stroke: "#e5e5e5" }),
      text(m.l - 6, yRss(v), v.toFixed(0), { "text-anchor": "end", ...middle, fill: "#1f5fbf" }),
      text(W - m.r + 6, yRps(r), r.toFixed(0), { ...middle, fill: "#777" }),
    );
  }
  for (let i = 0; i <= 6; i++) {
    const t = (tMax / 6) * i;
    out.push(text(x(t), H - m.b + 18, `${t.toFixed(0)} s`, { "text-anchor": "middle" }));
  }
  for (const e of marks) {
    const at = x(e.t / 1000);
    const look = e.kind === "restart" ? { stroke: "#d33", dash: "4 3" } : { stroke: "#2a2", dash: "1 3" };
    const a = { x1: at, x2: at, y1: m.t, y2: m.t + ph, stroke: look.stroke, "stroke-dasharray": look.dash };
    out.push(el("line", a, el("title", {}, escapeXml(`${e.kind} ${e.detail}`))));
  }
  if (baselineMiB > 0) {
    const limit = yRss(baselineMiB * (1 + RSS_LIMIT));
    out.push(
      el("line", {
        x1: m.l,
        x2: W - m.r,
        y1: limit,
        y2: limit,
        stroke: "#1f5fbf",
        "stroke-dasharray": "6 4",
        opacity: "0.6",
      }),
      text(W - m.r - 4, limit - 4, "+10% of RSS after warm-up", { "text-anchor": "end", fill: "#1f5fbf" }),
    );
  }
  out.push(
    line(
      data.map((d) => [x(d.t), yRps(d.requests)]),
      "#999",
      1,
    ),
    line(
      data.map((d) => [x(d.t), yRss(d.rssKiB / 1024)]),
      "#1f5fbf",
      2,
    ),
    el("rect", { x: m.l, y: m.t, width: pw, height: ph, fill: "none", stroke: "#333" }),
    text(m.l + pw / 2, H - 10, "time", { "text-anchor": "middle" }),
  );
  return svgDocument(W, H, "tether soak: RSS and requests per second over time", out);
}

await main().catch(async (e: Error) => {
  console.error(`soak failed: ${e.stack ?? e.message}`);
  await cleanup();
  process.exit(2);
});
