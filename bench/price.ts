/**
 * A price list: the CPU a request costs in one-change servers (bench/price-servers.ts),
 * in tether and in HAProxy, measured in one run with the peers interleaved
 * round by round, so each figure can be read against the others.
 *
 *   bun bench/price.ts [--rounds 6] [--duration 3] [--only static,proxy,tether,haproxy]
 *                      [--base DIR] [--connections 64] [--perf]
 *
 * --base DIR adds a peer "base": tether run from another checkout (a git
 * worktree of an earlier commit), for an A/B of a change in the same run.
 * --connections 1,2,8,64 measures each peer at each count (rows "peer@N"):
 * CPU per request depends on the load, not only on the code.
 * --perf also samples each measured run with Linux perf and splits the CPU
 * per request into kernel, the program's binary, JIT-compiled JS and libc.
 *
 * Every peer starts fresh each round (tether then never reaches its cookie
 * refresh time with wrk's clients, which ignore Set-Cookie), gets a 2 s
 * unmeasured warm-up and a measured wrk run: 64 keep-alive connections (by default) of
 * returning clients, as in bench/run.ts. The peer is pinned to CPU 0, wrk and
 * the backends to CPU 1. CPU per request is the peer's user + system time
 * over the requests it served; "÷ HAProxy" is the median of same-round ratios.
 */
import { join } from "node:path";
import { startBackends } from "./lib/backends.ts";
import { readFlags } from "./lib/flags.ts";
import { machineInfo, pinHarness } from "./lib/machine.ts";
import { freePort, HOST, waitReady } from "./lib/net.ts";
import { defaults } from "./lib/options.ts";
import { makePeers, pin, type Running, type StartContext, tetherPeer } from "./lib/peers.ts";
import { PARTS, perfAvailable, recordPerf, type Split } from "./lib/perf.ts";
import { cleanupSync, cpuTimes, makeTempDir, sleep, spawnLogged, stopAll, stopChild } from "./lib/procs.ts";
import { median } from "./lib/report.ts";
import { runWrk } from "./lib/wrk.ts";
import { VARIANTS } from "./price-servers.ts";

const REPO_ROOT = join(import.meta.dir, "..");
const ALL = ["haproxy", ...VARIANTS, "tether", "tether-plain", "tether-bun", "tether-bun-plain"];

async function startVariant(name: string, ctx: StartContext): Promise<Running> {
  const port = freePort();
  const upstream = ctx.backends[0]?.port ?? 0;
  const script = join(import.meta.dir, "price-servers.ts");
  const cmd = [...pin(ctx.opts.proxyCore), process.execPath, script, "--variant", name];
  const child = spawnLogged(
    name,
    [...cmd, "--port", String(port), "--upstream", String(upstream)],
    join(ctx.dir, `${name}.log`),
  );
  const ready = await waitReady(port, child, 10_000);
  if (!ready.ready) throw new Error(`${name} did not start: ${ready.reason}`);
  return { port, measuredPids: () => [child.proc.pid], stop: () => stopChild(child) };
}

/** The tether peer, run from another checkout's sources. */
function baseContext(ctx: StartContext, dir: string): StartContext {
  const tetherCmd = `${process.execPath} ${join(dir, "src/main.ts")}`;
  return { ...ctx, opts: { ...ctx.opts, tetherCmd } };
}

interface Measurement {
  usPerReq: number;
  rps: number;
  p99Ms: number;
  split: Split | null;
}

async function measure(
  run: Running,
  ctx: StartContext,
  durationS: number,
  clk: number,
  connections: number,
  perfLabel: string | null,
): Promise<Measurement> {
  const job = {
    url: `http://${HOST}:${run.port}/`,
    connections,
    threads: 1,
    clients: 64,
    core: ctx.opts.loadCore,
  };
  // As bench/run.ts: 2 s for JIT tiers, pools and caches to settle before the clock starts.
  await runWrk({ ...job, durationS: 2, logPath: join(ctx.dir, "warm.log") });
  const ticks = () => run.measuredPids().reduce((n, pid) => n + cpuTimes(pid).user + cpuTimes(pid).system, 0);
  const stopPerf = perfLabel ? recordPerf(run.measuredPids(), ctx.dir, perfLabel) : null;
  const before = ticks();
  const { result } = await runWrk({ ...job, durationS, logPath: join(ctx.dir, "wrk.log") });
  const cpuUs = ((ticks() - before) / clk) * 1e6;
  const split = stopPerf ? await stopPerf() : null;
  return {
    usPerReq: cpuUs / result.requests,
    rps: result.requests / (result.durationUs / 1e6),
    p99Ms: result.latencyUs.p99 / 1000,
    split,
  };
}

async function main(): Promise<void> {
  const argv = Bun.argv.slice(2);
  // --perf takes no value.
  const perf = argv.includes("--perf");
  const flags = readFlags(
    argv.filter((a) => a !== "--perf"),
    (f) => ["--rounds", "--duration", "--only", "--base", "--connections"].includes(f),
  );
  const get = (f: string) => flags.values.findLast(([k]) => k === f)?.[1];
  if (flags.help) {
    console.log(
      `usage: bun bench/price.ts [--rounds 6] [--duration 3] [--only ${ALL.join(",")}] [--base DIR] [--connections 64] [--perf]`,
    );
    return;
  }
  const rounds = Number(get("--rounds") ?? 6);
  const durationS = Number(get("--duration") ?? 3);
  const counts = (get("--connections") ?? "64").split(",").map(Number);
  if (counts.some((n) => !Number.isInteger(n) || n < 1)) throw new Error("--connections: whole numbers ≥ 1");
  if (perf && !perfAvailable()) throw new Error("--perf needs Linux perf (apt-get install linux-perf)");
  const baseDir = get("--base");
  const known = baseDir ? [...ALL, "base"] : ALL;
  const names = (get("--only") ?? known.join(",")).split(",").filter(Boolean);
  for (const n of names)
    if (!known.includes(n)) throw new Error(`--only: unknown "${n}" (${known.join(", ")})`);
  const machine = machineInfo("bench/price.ts");
  const opts = { ...defaults(), peers: [] };
  pinHarness(opts.loadCore);
  console.log(`- ${machine.date} · ${machine.cpuModel}, nproc ${machine.nproc} · Bun ${machine.bun}`);
  console.log(
    `- ${rounds} round(s) of ${durationS} s per peer, peers interleaved; proxy on CPU ${opts.proxyCore}\n`,
  );

  const dir = makeTempDir("tether-price-");
  const { backends, pid } = await startBackends(dir, 3, opts.loadCore);
  const ctx: StartContext = { dir, backends, backendsPid: pid, opts, repoRoot: REPO_ROOT };
  const peers = new Map<string, ReturnType<typeof makePeers>[number]>(
    makePeers(["haproxy", "tether"]).map((p) => [p.name as string, p]),
  );
  // tether with no persistence rule: the same pool, placed by the ring alone.
  peers.set("tether-plain", tetherPeer({ persistence: false }));
  // The same two on Bun.serve's front end ("engine": "bun") instead of tether's own.
  peers.set("tether-bun", tetherPeer({ engine: "bun" }));
  peers.set("tether-bun-plain", tetherPeer({ persistence: false, engine: "bun" }));
  const startPeer = (name: string): Promise<Running> => {
    const tether = peers.get("tether");
    if (name === "base" && tether && baseDir) return tether.start(baseContext(ctx, baseDir));
    const peer = peers.get(name);
    return peer ? peer.start(ctx) : startVariant(name, ctx);
  };
  const row = (name: string, n: number) => (counts.length > 1 ? `${name}@${n}` : name);
  const results = new Map<string, Measurement[]>(
    names.flatMap((name) => counts.map((n) => [row(name, n), []] as [string, Measurement[]])),
  );
  for (let round = 1; round <= rounds; round++) {
    for (const name of names) {
      const run = await startPeer(name);
      try {
        for (const n of counts) {
          const label = row(name, n);
          const m = await measure(run, ctx, durationS, machine.clockTicks, n, perf ? label : null);
          results.get(label)?.push(m);
          console.log(
            `round ${round}/${rounds}: ${label} ${m.usPerReq.toFixed(1)} µs/req, ${Math.round(m.rps)} req/s`,
          );
        }
      } finally {
        await run.stop();
      }
      await sleep(300);
    }
  }
  console.log(priceTable(results));
  if (perf) console.log(splitTable(results));
}

/** The CPU per request split by perf's samples: median shares applied to the median µs/request. */
export function splitTable(results: ReadonlyMap<string, Measurement[]>): string {
  const lines = [
    "",
    `| peer | CPU µs/req | ${PARTS.join(" | ")} |`,
    `|---|---:|${PARTS.map(() => "---:").join("|")}|`,
  ];
  for (const [name, ms] of results) {
    const splits = ms.flatMap((m) => (m.split ? [m.split] : []));
    if (splits.length === 0) continue;
    const us = median(ms.map((m) => m.usPerReq));
    const parts = PARTS.map((p) => (median(splits.map((sp) => sp[p])) * us).toFixed(1));
    lines.push(`| ${name} | ${us.toFixed(1)} | ${parts.join(" | ")} |`);
  }
  return lines.join("\n");
}

type Measured = { usPerReq: number; rps: number; p99Ms: number }[];

/** "tether@8" is compared with "haproxy@8": the same load. */
const atSameLoad = (name: string, peer: string) => {
  const at = name.indexOf("@");
  return at === -1 ? peer : `${peer}${name.slice(at)}`;
};

/**
 * Median CPU per request and same-round ratios to HAProxy and to "base";
 * "quietest" is the lowest round: the neighbours on a shared machine only
 * ever add CPU time, so it is the closest to the code's own cost.
 */
export function priceTable(results: ReadonlyMap<string, Measured>): string {
  const ratioTo = (ms: Measured, ref: Measured | undefined, of: (m: Measured[number]) => number) => {
    if (!ref?.length) return "";
    const sameRound = ms.map((m, i) => of(m) / (ref[i] ? of(ref[i]) : Number.NaN));
    return `${median(sameRound).toFixed(2)}×`;
  };
  const cpu = (m: Measured[number]) => m.usPerReq;
  const p99 = (m: Measured[number]) => m.p99Ms;
  const lines = [
    "",
    "| peer | CPU µs/req | quietest | ÷ HAProxy | ÷ floor | ÷ base | req/s | p99 ms | p99 ÷ HAProxy |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const [name, ms] of results) {
    const us = median(ms.map(cpu)).toFixed(1);
    const quietest = Math.min(...ms.map(cpu)).toFixed(1);
    const rps = Math.round(median(ms.map((m) => m.rps)));
    const haproxy = results.get(atSameLoad(name, "haproxy"));
    const base = results.get(atSameLoad(name, "base"));
    // The floor: the minimal Bun.serve proxy on tether's upstream client.
    const floor = results.get(atSameLoad(name, "proxy"));
    const latency = `${median(ms.map(p99)).toFixed(2)} | ${ratioTo(ms, haproxy, p99)}`;
    lines.push(
      `| ${name} | ${us} | ${quietest} | ${ratioTo(ms, haproxy, cpu)} | ${ratioTo(ms, floor, cpu)} | ${ratioTo(ms, base, cpu)} | ${rps} | ${latency} |`,
    );
  }
  return lines.join("\n");
}

if (import.meta.main) {
  process.on("exit", cleanupSync);
  try {
    await main();
  } finally {
    await stopAll();
  }
}
