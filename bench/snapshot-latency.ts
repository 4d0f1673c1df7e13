/**
 * Request latency while the snapshot of a large stick table is written, with
 * "workers": 0 (the thread that saves is the thread that serves).
 *
 *   bun bench/snapshot-latency.ts                         # 3 interleaved rounds of 12 s (~3 min)
 *   bun bench/snapshot-latency.ts --quick                 # 1 round of 6 s
 *   bun bench/snapshot-latency.ts --entries 1000000 --rounds 5 --duration 15
 *   bun bench/snapshot-latency.ts --base /tmp/base        # adds tether from another checkout
 *
 * Each run starts a fresh tether in a child process pinned to the proxy core,
 * fills one cookie-learn table with `entries` entries through putHashed, waits
 * until saving is in its steady state, then drives wrk (1 thread, 16
 * connections, bench/returning-client.lua) from the load core. Variants:
 *
 * - none: snapshot off, the floor.
 * - sync: the snapshot written the way it was first written: every intervalMs,
 *   collectSnapshot + writeSnapshot (one encode, writeSync, fsyncSync) on the
 *   serving thread.
 * - sliced: the running code's own snapshot ("snapshot": {"intervalMs"}),
 *   which saves through saveSnapshot.
 * - base (with --base DIR): the other checkout's own snapshot, for an A/B.
 *
 * Saves start every --interval-ms (default 2000; 1000 is the least the
 * config allows), so a save is under way for much of the run: the sync writer
 * holds the thread for the whole save, the sliced one for a slice at a time
 * and takes longer overall. The child also reports the longest stall of its
 * event loop (lateness of a 5 ms timer) during the measured run and, where
 * the code logs it, each save's duration, its longest slice and how many of
 * its slices took over 5 ms (wall time: a slice that a collection or another
 * process interrupts counts whole).
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { startBackends } from "./lib/backends.ts";
import type { Backend } from "./lib/configs.ts";
import { readFlags } from "./lib/flags.ts";
import { machineInfo } from "./lib/machine.ts";
import { freePort } from "./lib/net.ts";
import { pin } from "./lib/peers.ts";
import { installCleanup, makeTempDir, sleep, spawnLogged, stopAll, stopChild } from "./lib/procs.ts";
import { median } from "./lib/report.ts";
import { runWrk } from "./lib/wrk.ts";

const REPO_ROOT = resolve(import.meta.dir, "..");
const READY = "@@READY ";
const SUMMARY = "@@SUMMARY ";

type Writer = "none" | "sync" | "own";

interface ChildSummary {
  /** Longest lateness of a 5 ms timer during the measured run. */
  maxStallMs: number;
  /** Saves finished during the measured run, where the code reports them. */
  saves: { ms: number; slices?: number; longestSliceMs?: number; slicesOver5Ms?: number }[] | null;
}

interface Run {
  variant: string;
  round: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  errors: number;
  child: ChildSummary;
}

// ---------------------------------------------------------------- child

/** Child mode: tether from `root`, one table filled, saves as `writer` says; reports on SIGUSR2. */
async function child(
  root: string,
  writer: Writer,
  port: number,
  backends: Backend[],
  entries: number,
  intervalMs: number,
) {
  const { startTether } = await import(join(root, "src/server/app.ts"));
  const { resolveConfig } = await import(join(root, "src/config/load.ts"));
  const { createLogger } = await import(join(root, "src/log.ts"));
  const { collectSnapshot, writeSnapshot } = await import(join(root, "src/state/snapshot.ts"));
  const file = join(process.cwd(), "state.msgpack");
  const config = resolveConfig(
    {
      listeners: [{ name: "web", protocol: "http", address: `127.0.0.1:${port}`, pool: "app" }],
      pools: {
        app: {
          backends: backends.map((b) => ({ id: b.id, url: `http://127.0.0.1:${b.port}` })),
          persistence: [{ type: "cookie", mode: "learn", name: "SID", maxEntries: entries }],
        },
      },
      secrets: { cookieKeys: [Buffer.alloc(32, 5).toString("base64")] },
      accessLog: false,
      workers: 0,
      snapshot: writer === "own" ? { file, intervalMs } : false,
    },
    { baseDir: process.cwd(), env: {} },
  );
  let saves: ChildSummary["saves"] = writer === "none" ? [] : null;
  let measuring = false;
  const log = createLogger((line: string) => {
    const l = JSON.parse(line);
    if (l.msg === "snapshot written" && measuring) {
      saves ??= [];
      const round = (ms: number) => Math.round(ms * 10) / 10;
      saves.push({
        ms: l.ms,
        slices: l.slices,
        longestSliceMs: round(l.longestSliceMs),
        slicesOver5Ms: l.slicesOver5Ms,
      });
    } else if (l.level !== "debug") process.stdout.write(line);
  }, "debug");
  const tether = startTether(config, log);

  const table = tether.runtime.pools.get("app").chain.tables.get("0:cookie");
  const nowSec = Math.floor(Date.now() / 1000);
  for (let i = 0; i < entries; i++)
    table.putHashed(
      Math.floor(Math.random() * 2 ** 48),
      backends[i % backends.length]?.id,
      nowSec + 1800,
      nowSec,
    );

  if (writer === "sync") {
    saves = [];
    setInterval(() => {
      const started = performance.now();
      writeSnapshot(file, collectSnapshot(tether.runtime, tether.operatorStates));
      if (measuring) saves?.push({ ms: Math.round(performance.now() - started) });
    }, intervalMs);
  }

  let maxStallMs = 0;
  let last = performance.now();
  setInterval(() => {
    const now = performance.now();
    if (measuring) maxStallMs = Math.max(maxStallMs, now - last - 5);
    last = now;
  }, 5);
  process.on("SIGUSR1", () => {
    measuring = true;
    maxStallMs = 0;
    if (saves) saves = [];
  });
  process.on("SIGUSR2", () => {
    measuring = false;
    const summary: ChildSummary = { maxStallMs: Math.round(maxStallMs), saves };
    process.stdout.write(`${SUMMARY}${JSON.stringify(summary)}\n`);
  });
  process.stdout.write(`${READY}${JSON.stringify({ size: table.size })}\n`);
}

// ---------------------------------------------------------------- harness

interface Options {
  rounds: number;
  durationS: number;
  entries: number;
  intervalMs: number;
  warmupS: number;
  base: string | null;
}

function parseOptions(argv: string[]): Options | null {
  const flags = readFlags(argv, (f) =>
    ["--rounds", "--duration", "--entries", "--interval-ms", "--warmup", "--base"].includes(f),
  );
  if (flags.help) return null;
  const o: Options = flags.quick
    ? { rounds: 1, durationS: 6, entries: 1_000_000, intervalMs: 2000, warmupS: 4, base: null }
    : { rounds: 3, durationS: 12, entries: 1_000_000, intervalMs: 2000, warmupS: 4, base: null };
  for (const [flag, raw] of flags.values) {
    if (flag === "--base") o.base = resolve(raw);
    else {
      const n = Number(raw);
      if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} needs a whole number >= 1, got ${raw}`);
      if (flag === "--rounds") o.rounds = n;
      if (flag === "--duration") o.durationS = n;
      if (flag === "--entries") o.entries = n;
      if (flag === "--interval-ms") o.intervalMs = Math.max(1000, n);
      if (flag === "--warmup") o.warmupS = n;
    }
  }
  return o;
}

async function waitForLine(path: string, mark: string, timeoutMs: number): Promise<string> {
  for (let waited = 0; waited < timeoutMs; waited += 50) {
    const text = await Bun.file(path).text();
    const line = text.split("\n").find((l) => l.startsWith(mark));
    if (line) return line.slice(mark.length);
    await sleep(50);
  }
  throw new Error(`no ${mark.trim()} within ${timeoutMs} ms:\n${(await Bun.file(path).text()).slice(-1500)}`);
}

async function measure(
  variant: string,
  root: string,
  writer: Writer,
  round: number,
  o: Options,
  backends: Backend[],
  dir: string,
): Promise<Run> {
  const runDir = makeTempDir(`tether-snap-${variant}-`);
  const port = freePort();
  const logPath = join(dir, `${variant}-${round}.log`);
  const cmd = [
    ...pin("0"),
    process.execPath,
    import.meta.path,
    "--child",
    root,
    writer,
    String(port),
    JSON.stringify(backends),
    String(o.entries),
    String(o.intervalMs),
  ];
  const proc = spawnLogged(`tether-${variant}`, cmd, logPath, runDir);
  try {
    await waitForLine(logPath, READY, 60_000);
    // A save or two first, so the saves are in their steady state when wrk starts.
    await sleep(o.warmupS * 1000);
    proc.proc.kill("SIGUSR1");
    const { result } = await runWrk({
      url: `http://127.0.0.1:${port}/`,
      durationS: o.durationS,
      connections: 16,
      threads: 1,
      clients: 64,
      core: "1",
      logPath: join(dir, `wrk-${variant}-${round}.log`),
    });
    proc.proc.kill("SIGUSR2");
    const child = JSON.parse(await waitForLine(logPath, SUMMARY, 10_000)) as ChildSummary;
    const e = result.errors;
    return {
      variant,
      round,
      rps: result.requests / (result.durationUs / 1e6),
      p50Ms: result.latencyUs.p50 / 1000,
      p99Ms: result.latencyUs.p99 / 1000,
      maxMs: result.latencyUs.max / 1000,
      errors: e.connect + e.read + e.write + e.status + e.timeout,
      child,
    };
  } finally {
    await stopChild(proc);
  }
}

function table(runs: Run[], variants: string[]): string {
  const fmt = (n: number, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : "-");
  const lines = [
    "| variant | req/s | p50 ms | p99 ms | max ms | longest stall ms | saves | save ms | longest slice ms | slices over 5 ms | errors |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const v of variants) {
    const rs = runs.filter((r) => r.variant === v);
    if (rs.length === 0) continue;
    const saves = rs.flatMap((r) => r.child.saves ?? []);
    const reported = rs.every((r) => r.child.saves !== null);
    const slices = saves.flatMap((s) => (s.longestSliceMs === undefined ? [] : [s.longestSliceMs]));
    const sliced = saves.filter((s) => s.slices !== undefined);
    const over = sliced.reduce((n, s) => n + (s.slicesOver5Ms ?? 0), 0);
    const all = sliced.reduce((n, s) => n + (s.slices ?? 0), 0);
    lines.push(
      `| ${v} | ${fmt(median(rs.map((r) => r.rps)), 0)} | ${fmt(median(rs.map((r) => r.p50Ms)), 2)} | ${fmt(
        median(rs.map((r) => r.p99Ms)),
        2,
      )} | ${fmt(median(rs.map((r) => r.maxMs)))} | ${fmt(median(rs.map((r) => r.child.maxStallMs)), 0)} | ${
        reported ? saves.length : "-"
      } | ${saves.length ? fmt(median(saves.map((s) => s.ms)), 0) : "-"} | ${
        slices.length ? fmt(Math.max(...slices)) : "-"
      } | ${sliced.length ? `${over} of ${all}` : "-"} | ${rs.reduce((n, r) => n + r.errors, 0)} |`,
    );
  }
  return lines.join("\n");
}

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2));
  if (!o) {
    console.log(
      "usage: bun bench/snapshot-latency.ts [--quick] [--rounds 3] [--duration 10] [--entries 1000000] [--interval-ms 2000] [--warmup 4] [--base DIR]",
    );
    return;
  }
  if (!Bun.which("wrk")) throw new Error("wrk is required (apt-get install wrk)");
  installCleanup((o.rounds * 4 * (o.durationS + o.warmupS + 30) + 60) * 1000);
  const machine = machineInfo("bench/snapshot-latency.ts");
  const dir = makeTempDir("tether-snap-bench-");
  const { backends } = await startBackends(dir, 3, "1");
  const variants: [string, string, Writer][] = [
    ["none", REPO_ROOT, "none"],
    ["sync", REPO_ROOT, "sync"],
    ["sliced", REPO_ROOT, "own"],
    ...(o.base ? [["base", o.base, "own"] as [string, string, Writer]] : []),
  ];
  console.error(
    `${o.rounds} round(s) × ${variants.length} variants, ${o.entries} entries, ${o.durationS} s each; load ${machine.loadAvg.join(" ")}`,
  );
  const runs: Run[] = [];
  for (let round = 1; round <= o.rounds; round++) {
    for (const [name, root, writer] of variants) {
      const r = await measure(name, root, writer, round, o, backends, dir);
      console.error(
        `round ${round} ${name}: p99 ${r.p99Ms.toFixed(2)} ms, max ${r.maxMs.toFixed(1)} ms, stall ${r.child.maxStallMs} ms`,
      );
      runs.push(r);
    }
  }
  await stopAll();
  console.log(
    `\n## Latency while a ${o.entries.toLocaleString("en")}-entry snapshot is written (workers 0, wrk -t1 -c16, median of ${o.rounds} round(s))\n`,
  );
  console.log(
    table(
      runs,
      variants.map(([n]) => n),
    ),
  );
  const out = join(REPO_ROOT, "bench", "results");
  mkdirSync(out, { recursive: true });
  const path = join(out, `snapshot-latency-${new Date().toISOString().replace(/[:.]/g, "-")}.json`);
  writeFileSync(path, JSON.stringify({ machine, options: o, runs }, null, 2));
  console.log(`\nruns: ${path}`);
}

if (process.argv[2] === "--child") {
  const [, , , root, writer, port, backends, entries, intervalMs] = process.argv;
  await child(
    root as string,
    writer as Writer,
    Number(port),
    JSON.parse(backends as string) as Backend[],
    Number(entries),
    Number(intervalMs),
  );
} else {
  await main();
}
