/**
 * `bun run bench`: tether against nginx and HAProxy on the same job, with wrk
 * and returning (cookie-presenting) clients. See bench/README.md.
 *
 * `bun run bench -- --h2`: the same over HTTP/2 with TLS (one certificate for
 * every proxy, h2 and http/1.1 offered by ALPN), with h2load instead of wrk;
 * the backends count what they answer, so the report shows where each
 * proxy's requests went.
 *
 * Layout on a 2-core machine: the proxy under test alone on one core, wrk and
 * the backends on the other, so the proxy's own cost decides its throughput.
 * Peers run interleaved (tether, nginx, haproxy, direct, tether, ...), each run
 * in a fresh process, and medians are reported. Only 127.0.0.1 is contacted.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { makeCert } from "../test/support/certs.ts";
import { backendCounts, countsBetween, startBackends } from "./lib/backends.ts";
import { summaryChart } from "./lib/chart.ts";
import type { TlsFiles } from "./lib/configs.ts";
import { type H2loadJob, h2loadErrorCount, runH2load } from "./lib/h2load.ts";
import {
  type Machine as BaseMachine,
  machineInfo as baseMachineInfo,
  NOISY_PCT,
  pinHarness,
  splitAvailable,
} from "./lib/machine.ts";
import { othersPct, rssMiB, sample, usageBetween } from "./lib/measure.ts";
import { checkSticky, HOST, returningCookie } from "./lib/net.ts";
import { type Options, type PeerName, parseOptions, usage } from "./lib/options.ts";
import { makePeers, type Peer, type StartContext } from "./lib/peers.ts";
import { capture, cleanupSync, installCleanup, makeTempDir, sleep, stopAll } from "./lib/procs.ts";
import {
  backendSpread,
  backendTable,
  type RunRecord,
  ratios,
  ratioTable,
  summarize,
  summaryTable,
} from "./lib/report.ts";
import { errorCount, runWrk, type WrkJob } from "./lib/wrk.ts";

const REPO_ROOT = resolve(import.meta.dir, "..");
type Machine = BaseMachine & { wrk: string; h2load: string };

function machineInfo(): Machine {
  return {
    ...baseMachineInfo("bench/run.ts"),
    wrk: /wrk (?:\S*\/)?(\S+)/.exec(capture(["wrk", "-v"]))?.[1] ?? "?",
    h2load: /nghttp2\/(\S+)/.exec(capture(["h2load", "--version"]))?.[1] ?? "?",
  };
}

/** The h2 mode's context: where the backends' request counts are read. */
type RunContext = StartContext & { countPort: number };

type WrkJobBase = Omit<WrkJob, "durationS" | "logPath">;

/** The measured wrk run, with CPU samples of the proxy and of both cores taken just around it. */
async function measuredWrk(job: WrkJobBase, pids: number[], ctx: StartContext, clk: number) {
  const { opts } = ctx;
  const proxy0 = sample(pids, opts.proxyCore);
  const load0 = sample([ctx.backendsPid], opts.loadCore);
  const logPath = join(ctx.dir, "wrk.log");
  const { result, cpuS: wrkCpuS } = await runWrk({ ...job, durationS: opts.durationS, logPath });
  const proxy1 = sample(pids, opts.proxyCore);
  const load1 = sample([ctx.backendsPid], opts.loadCore);
  return {
    w: result,
    use: usageBetween(proxy0, proxy1, clk),
    noisePct: { proxy: othersPct(proxy0, proxy1, clk), load: othersPct(load0, load1, clk, wrkCpuS) },
  };
}

/** One fresh start of `peer`: stickiness probe, warm-up, measured wrk run, stop. */
async function measureOnce(peer: Peer, ctx: RunContext, round: number, clk: number): Promise<RunRecord> {
  const { opts } = ctx;
  const run = await peer.start(ctx);
  try {
    const sticky = await checkSticky(run.port, 4, 5, !!ctx.tls).catch(() => false);
    if (opts.h2) return await measureH2(peer, run.port, run.measuredPids(), sticky, ctx, round, clk);
    const job: WrkJobBase = {
      url: `http://${HOST}:${run.port}/`,
      connections: opts.connections,
      threads: opts.threads,
      clients: opts.clients,
      keepAlive: opts.keepAlive !== 0,
      core: Bun.which("taskset") ? opts.loadCore : null,
    };
    // Unmeasured: lets JITs compile, pools fill and caches warm before the clock starts.
    if (opts.warmupS > 0)
      await runWrk({ ...job, durationS: opts.warmupS, logPath: join(ctx.dir, "wrk-warm.log") });
    const pids = run.measuredPids();
    const { w, use, noisePct } = await measuredWrk(job, pids, ctx, clk);
    const measured = pids.length > 0;
    return {
      round,
      peer: peer.name,
      rps: w.requests / (w.durationUs / 1e6),
      p50Ms: w.latencyUs.p50 / 1000,
      p99Ms: w.latencyUs.p99 / 1000,
      requests: w.requests,
      errors: errorCount(w),
      cpuUsPerReq: measured && w.requests > 0 ? (use.cpuS * 1e6) / w.requests : null,
      cpuPct: measured ? (use.cpuS / use.wallS) * 100 : null,
      rssMiB: measured ? rssMiB(pids) : null,
      noisePct,
      sticky,
      wrk: w,
    };
  } finally {
    await run.stop();
  }
}

type H2loadJobBase = Omit<H2loadJob, "durationS" | "logPath" | "requestLog">;

/**
 * The h2 mode's run: the proxy issues a cookie to a first request, then every
 * h2load connection presents it on every request (see bench/lib/h2load.ts),
 * so all of a run's requests should reach the one backend that cookie names.
 * The backends' own counts, read just outside the CPU samples, show whether
 * they did.
 */
async function measureH2(
  peer: Peer,
  port: number,
  pids: number[],
  sticky: boolean,
  ctx: RunContext,
  round: number,
  clk: number,
): Promise<RunRecord> {
  const { opts } = ctx;
  const client = await returningCookie(port, true);
  const job: H2loadJobBase = {
    url: `https://${HOST}:${port}/`,
    connections: opts.connections,
    streams: opts.streams,
    threads: opts.threads,
    cookie: client.cookie,
    core: Bun.which("taskset") ? opts.loadCore : null,
  };
  if (opts.warmupS > 0)
    await runH2load({
      ...job,
      durationS: opts.warmupS,
      logPath: join(ctx.dir, "h2load-warm.log"),
      requestLog: null,
    });
  const counts0 = await backendCounts(ctx.countPort);
  const proxy0 = sample(pids, opts.proxyCore);
  const load0 = sample([ctx.backendsPid], opts.loadCore);
  const { result: h, cpuS: loadToolCpuS } = await runH2load({
    ...job,
    durationS: opts.durationS,
    logPath: join(ctx.dir, "h2load.log"),
    requestLog: join(ctx.dir, "h2load-requests.tsv"),
  });
  const proxy1 = sample(pids, opts.proxyCore);
  const load1 = sample([ctx.backendsPid], opts.loadCore);
  const counts1 = await backendCounts(ctx.countPort);
  if (h.protocol !== "h2") throw new Error(`${peer.name}: ALPN chose ${h.protocol}, not h2`);
  const use = usageBetween(proxy0, proxy1, clk);
  const measured = pids.length > 0;
  return {
    round,
    peer: peer.name,
    rps: h.requests / (h.durationUs / 1e6),
    p50Ms: h.latencyUs.p50 / 1000,
    p99Ms: h.latencyUs.p99 / 1000,
    requests: h.requests,
    errors: h2loadErrorCount(h),
    cpuUsPerReq: measured && h.requests > 0 ? (use.cpuS * 1e6) / h.requests : null,
    cpuPct: measured ? (use.cpuS / use.wallS) * 100 : null,
    rssMiB: measured ? rssMiB(pids) : null,
    noisePct: {
      proxy: othersPct(proxy0, proxy1, clk),
      load: othersPct(load0, load1, clk, loadToolCpuS),
    },
    sticky,
    h2: {
      h2load: h,
      cookie: client.cookie,
      cookieIssued: client.issued,
      cookieBackend: client.backend,
      backendRequests: countsBetween(counts0, counts1),
    },
  };
}

/** Generous upper bound for the whole run: every run plus start/stop/probe slack, and margin. */
function budgetMs(opts: Options): number {
  const perRun = opts.warmupS + opts.durationS + 25;
  return (perRun * opts.peers.length * opts.rounds + 60) * 1000 * 1.5;
}

function header(m: Machine, opts: Options, peers: Peer[]): string {
  const versions = peers
    .filter((p) => p.unavailable() === null && p.version())
    .map((p) => `${p.name} ${p.version()}`);
  return [
    `## tether bench — ${m.date}`,
    "",
    `- machine: ${m.cpuModel}, nproc ${m.nproc}, ${m.kernel}, load average at start ${m.loadAvg.join(" ")}`,
    `- versions: ${[`Bun ${m.bun}`, opts.h2 ? `h2load ${m.h2load}` : `wrk ${m.wrk}`, ...versions].join(" · ")}`,
    `- command: \`${m.command}\``,
    opts.h2
      ? `- job: HTTP/2 over TLS (one self-signed P-256 certificate for every proxy; ALPN h2,http/1.1) · ${opts.backends} HTTP/1.1 backends (${opts.bodyBytes} B body) · h2load -t${opts.threads} -c${opts.connections} -m${opts.streams} -D${opts.durationS} after ${opts.warmupS} s warm-up · every request presents the cookie the proxy issued to a first request · ${opts.rounds} interleaved round(s), medians shown`
      : `- job: ${opts.backends} backends (${opts.bodyBytes} B body) · wrk -t${opts.threads} -c${opts.connections} -d${opts.durationS}s after ${opts.warmupS} s warm-up · ${opts.clients} returning clients per wrk thread${opts.keepAlive === 0 ? " · client keep-alive off" : ""} · ${opts.rounds} interleaved round(s), medians shown`,
    `- cores: proxy on CPU ${opts.proxyCore}; ${opts.h2 ? "h2load" : "wrk"} and backends on CPU ${opts.loadCore}${Bun.which("taskset") ? "" : " (taskset missing: NOT pinned)"}`,
  ].join("\n");
}

interface Outcome {
  records: RunRecord[];
  failures: Partial<Record<PeerName, string>>;
}

/** Interleaved rounds; a peer that fails to start is dropped from later rounds, the others go on. */
async function runRounds(active: Peer[], ctx: RunContext, clk: number): Promise<Outcome> {
  const records: RunRecord[] = [];
  const failures: Partial<Record<PeerName, string>> = {};
  for (let round = 1; round <= ctx.opts.rounds; round++) {
    for (const peer of active) {
      if (failures[peer.name]) continue;
      process.stderr.write(`round ${round}/${ctx.opts.rounds}: ${peer.name} ... `);
      try {
        const r = await measureOnce(peer, ctx, round, clk);
        records.push(r);
        process.stderr.write(`${Math.round(r.rps)} req/s, p99 ${r.p99Ms.toFixed(2)} ms\n`);
      } catch (e) {
        failures[peer.name] = (e as Error).message;
        process.stderr.write(`FAILED\n${(e as Error).message}\n`);
      }
      // Let sockets in TIME_WAIT and the previous process's exit settle before the next peer.
      await sleep(500);
    }
  }
  return { records, failures };
}

function notesFor(peers: Peer[], skipped: Record<string, string>, outcome: Outcome, hasClientMade: string[]) {
  const notes: string[] = [];
  for (const [name, why] of Object.entries(skipped)) notes.push(`${name} skipped: ${why}`);
  for (const [name, why] of Object.entries(outcome.failures))
    notes.push(`${name} failed and was dropped: ${(why ?? "").split("\n")[0]}`);
  for (const p of peers) notes.push(...p.notes);
  for (const name of hasClientMade)
    if (name !== "nginx" && name !== "direct")
      notes.push(`${name} set no cookie: its clients presented client-made SRVID cookies`);
  const noisy = outcome.records.filter(
    (r) => Math.max(r.noisePct.proxy ?? 0, r.noisePct.load ?? 0) > NOISY_PCT,
  );
  if (noisy.length)
    notes.push(
      `NOISY: ${noisy.length} of ${outcome.records.length} runs lost more than ${NOISY_PCT}% of a core to other processes; rerun on a quiet machine before quoting numbers`,
    );
  return notes;
}

async function main(): Promise<void> {
  const opts = parseOptions(Bun.argv.slice(2), process.env);
  if (opts.help) {
    console.log(usage());
    return;
  }
  const tool = opts.h2 ? { name: "h2load", pkg: "nghttp2-client" } : { name: "wrk", pkg: "wrk" };
  if (!Bun.which(tool.name))
    throw new Error(`${tool.name} is not installed (apt-get install ${tool.pkg}): nothing can be measured`);
  installCleanup(budgetMs(opts));
  // Before pinning: nproc counts only the CPUs this process may use.
  const machine = machineInfo();
  pinHarness(opts.loadCore);
  const peers = makePeers(opts.peers, { h2: opts.h2 });
  const { active, skipped } = splitAvailable(peers);
  console.log(header(machine, opts, peers));
  for (const [name, why] of Object.entries(skipped)) console.log(`- SKIPPED ${name}: ${why}`);
  console.log("");

  const dir = makeTempDir("tether-bench-");
  try {
    const { backends, pid, countPort } = await startBackends(
      dir,
      opts.backends,
      opts.loadCore,
      opts.bodyBytes,
    );
    const tls = opts.h2 ? await certificate(dir) : undefined;
    const ctx: RunContext = { dir, backends, backendsPid: pid, opts, repoRoot: REPO_ROOT, countPort, tls };
    const outcome = await runRounds(active, ctx, machine.clockTicks);
    report(machine, opts, peers, skipped, outcome);
    if (outcome.records.length === 0) process.exitCode = 1;
  } finally {
    await stopAll();
    cleanupSync();
  }
}

/** One self-signed P-256 certificate for localhost, used by every proxy of the h2 mode. */
async function certificate(dir: string): Promise<TlsFiles> {
  const c = await makeCert(dir, "localhost", ["IP:127.0.0.1"]);
  const pem = join(dir, "proxy.pem");
  writeFileSync(pem, (await Bun.file(c.cert).text()) + (await Bun.file(c.key).text()));
  return { ...c, pem };
}

function report(m: Machine, opts: Options, peers: Peer[], skipped: Record<string, string>, outcome: Outcome) {
  const summary = summarize(outcome.records, opts.peers);
  const against = opts.peers.filter((p) => p !== "tether");
  const rs = ratios(outcome.records, against);
  const clientMade = summary.filter((s) => s.clientMadeCookies).map((s) => s.peer);
  const notes = notesFor(peers, skipped, outcome, clientMade);
  console.log(`\n${summaryTable(summary)}\n`);
  if (rs.length) {
    console.log(
      "tether ÷ peer, median of same-round ratios (req/s: above 1 favours tether; the rest: below 1):\n",
    );
    console.log(`${ratioTable(rs)}\n`);
  }
  const spread = opts.h2 ? backendSpread(outcome.records, opts.peers) : [];
  if (spread.length) {
    console.log(
      "Requests each backend answered during the measured runs (all rounds), and the share that reached the backend the run's cookie named:\n",
    );
    console.log(`${backendTable(spread)}\n`);
  }
  if (notes.length) console.log(`Notes:\n${notes.map((n) => `- ${n}`).join("\n")}\n`);

  const outDir = resolve(REPO_ROOT, opts.outDir);
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `${opts.h2 ? "h2-" : ""}${m.date.replace(/[:.]/g, "-")}.json`);
  const configs = Object.fromEntries(peers.filter((p) => p.lastConfig).map((p) => [p.name, p.lastConfig]));
  const versions = Object.fromEntries(peers.map((p) => [p.name, p.unavailable() ? null : p.version()]));
  const data = {
    machine: m,
    options: opts,
    versions,
    summary,
    ratios: rs,
    ...(opts.h2 ? { backends: spread } : {}),
    notes,
    configs,
    runs: outcome.records,
  };
  writeFileSync(file, `${JSON.stringify(data, null, 2)}\n`);
  console.log(`results: ${file}`);
  if (summary.length > 0) {
    const chart = opts.svgFile ? resolve(REPO_ROOT, opts.svgFile) : file.replace(/\.json$/, ".svg");
    mkdirSync(dirname(chart), { recursive: true });
    writeFileSync(chart, summaryChart(summary, m, opts));
    console.log(`chart: ${chart}`);
  }
}

await main().catch(async (e: Error) => {
  console.error(`bench failed: ${e.message}`);
  await stopAll();
  process.exit(1);
});
