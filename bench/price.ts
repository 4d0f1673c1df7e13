/**
 * A price list: the CPU a request costs in one-change servers (bench/price-servers.ts),
 * in tether and in HAProxy, measured in one run with the peers interleaved
 * round by round, so each figure can be read against the others.
 *
 *   bun bench/price.ts [--rounds 6] [--duration 3] [--only static,proxy,tether,haproxy]
 *
 * Every peer starts fresh each round (tether then never reaches its cookie
 * refresh time with wrk's clients, which ignore Set-Cookie), gets a 2 s
 * unmeasured warm-up and a measured wrk run: 64 keep-alive connections of
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
import { makePeers, pin, type Running, type StartContext } from "./lib/peers.ts";
import { cleanupSync, cpuTimes, makeTempDir, sleep, spawnLogged, stopAll, stopChild } from "./lib/procs.ts";
import { median } from "./lib/report.ts";
import { runWrk } from "./lib/wrk.ts";
import { VARIANTS } from "./price-servers.ts";

const REPO_ROOT = join(import.meta.dir, "..");
const ALL = ["haproxy", ...VARIANTS, "tether"];

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

async function measure(run: Running, ctx: StartContext, durationS: number, clk: number) {
  const job = {
    url: `http://${HOST}:${run.port}/`,
    connections: 64,
    threads: 1,
    clients: 64,
    core: ctx.opts.loadCore,
  };
  // As bench/run.ts: 2 s for JIT tiers, pools and caches to settle before the clock starts.
  await runWrk({ ...job, durationS: 2, logPath: join(ctx.dir, "warm.log") });
  const ticks = () => run.measuredPids().reduce((n, pid) => n + cpuTimes(pid).user + cpuTimes(pid).system, 0);
  const before = ticks();
  const { result } = await runWrk({ ...job, durationS, logPath: join(ctx.dir, "wrk.log") });
  const cpuUs = ((ticks() - before) / clk) * 1e6;
  return { usPerReq: cpuUs / result.requests, rps: result.requests / (result.durationUs / 1e6) };
}

async function main(): Promise<void> {
  const flags = readFlags(Bun.argv.slice(2), (f) => ["--rounds", "--duration", "--only"].includes(f));
  const get = (f: string) => flags.values.findLast(([k]) => k === f)?.[1];
  if (flags.help) {
    console.log(`usage: bun bench/price.ts [--rounds 6] [--duration 3] [--only ${ALL.join(",")}]`);
    return;
  }
  const rounds = Number(get("--rounds") ?? 6);
  const durationS = Number(get("--duration") ?? 3);
  const names = (get("--only") ?? ALL.join(",")).split(",").filter(Boolean);
  for (const n of names) if (!ALL.includes(n)) throw new Error(`--only: unknown "${n}" (${ALL.join(", ")})`);
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
  const peers = new Map(makePeers(["haproxy", "tether"]).map((p) => [p.name as string, p]));
  const results = new Map<string, { usPerReq: number; rps: number }[]>(names.map((n) => [n, []]));
  for (let round = 1; round <= rounds; round++) {
    for (const name of names) {
      const peer = peers.get(name);
      const run = peer ? await peer.start(ctx) : await startVariant(name, ctx);
      try {
        const m = await measure(run, ctx, durationS, machine.clockTicks);
        results.get(name)?.push(m);
        console.log(
          `round ${round}/${rounds}: ${name} ${m.usPerReq.toFixed(1)} µs/req, ${Math.round(m.rps)} req/s`,
        );
      } finally {
        await run.stop();
      }
      await sleep(300);
    }
  }
  const base = results.get("haproxy");
  console.log("\n| peer | CPU µs/req | ÷ HAProxy | req/s |\n|---|---:|---:|---:|");
  for (const [name, ms] of results) {
    const ratio = base?.length
      ? median(ms.map((m, i) => m.usPerReq / (base[i]?.usPerReq ?? Number.NaN)))
      : Number.NaN;
    const us = median(ms.map((m) => m.usPerReq)).toFixed(1);
    console.log(
      `| ${name} | ${us} | ${Number.isNaN(ratio) ? "" : `${ratio.toFixed(2)}×`} | ${Math.round(median(ms.map((m) => m.rps)))} |`,
    );
  }
}

process.on("exit", cleanupSync);
try {
  await main();
} finally {
  await stopAll();
}
