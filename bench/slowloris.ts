/**
 * Slowloris against tether: how much of its normal request rate a client keeps
 * while 1,000 connections each send one header byte a second and never finish
 * their request head. Target: at least 80% of the rate without them.
 *
 *   bun bench/slowloris.ts                       # 1,000 slow connections for 20 s (~75 s in all)
 *   bun bench/slowloris.ts --rounds 2            # baseline/attack alternated twice (10 s each)
 *   bun bench/slowloris.ts --slow 2000 --duration 30 --connections 16
 *
 * Layout as in bench/run.ts: tether (a fresh `bun src/main.ts` child) alone on
 * --proxy-core; wrk, the backend and this process (the slowloris connections)
 * on --load-core. Phases: warm-up, then per round a baseline and a run under
 * slowloris, then a last baseline; each attack is compared with the baselines
 * either side of it, so slow drift of a shared machine cancels out. Slow
 * connections that tether closes are reopened at once, as an attacker would;
 * their lifetimes show the head deadline Bun applies. tether's CPU time per
 * request is reported too: unlike req/s it hardly moves with other load on the
 * machine. Only 127.0.0.1 is contacted; every process started is stopped at
 * the end. Exit code 1 when the target is missed.
 */
import { readdirSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import type { Socket } from "bun";
import { startBackends } from "./lib/backends.ts";
import { tetherConfig } from "./lib/configs.ts";
import { pinHarness } from "./lib/machine.ts";
import { othersPct, sample } from "./lib/measure.ts";
import { freePort, HOST, waitReady } from "./lib/net.ts";
import { pin } from "./lib/peers.ts";
import {
  capture,
  cleanupSync,
  cpuTimes,
  makeTempDir,
  processTree,
  rssKiB,
  sleep,
  spawnLogged,
  stopAll,
} from "./lib/procs.ts";
import { errorCount, runWrk, type WrkResult } from "./lib/wrk.ts";

const REPO_ROOT = join(import.meta.dir, "..");
const HEAD = "GET / HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: slowloris\r\nX-Slow: ";

interface Opts {
  slow: number;
  /** Seconds under slowloris in all (split over the rounds). */
  durationS: number;
  rounds: number;
  connections: number;
  proxyCore: string;
  loadCore: string;
}

function parseArgs(argv: string[]): Opts {
  const o: Opts = { slow: 1000, durationS: 20, rounds: 1, connections: 16, proxyCore: "0", loadCore: "1" };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = (argv[i] as string).split("=", 2);
    const value = inline ?? argv[++i];
    const int = () => {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} needs a positive integer`);
      return n;
    };
    if (flag === "--slow") o.slow = int();
    else if (flag === "--duration") o.durationS = int();
    else if (flag === "--rounds") o.rounds = int();
    else if (flag === "--connections") o.connections = int();
    else if (flag === "--proxy-core") o.proxyCore = String(value);
    else if (flag === "--load-core") o.loadCore = String(value);
    else
      throw new Error(
        `unknown option ${flag} (--slow, --duration, --rounds, --connections, --proxy-core, --load-core)`,
      );
  }
  return o;
}

/** Keeps `count` slowloris connections open, reopening any that close, one byte a second each. */
class Slowloris {
  readonly open = new Set<Socket<{ sent: number; openedAt: number }>>();
  /** Lifetimes (s) of connections tether closed, and how many were opened in all. */
  readonly lifetimesS: number[] = [];
  opened = 0;
  failedConnects = 0;
  private running = true;
  private timer: ReturnType<typeof setInterval> | null = null;

  constructor(
    private readonly port: number,
    private readonly count: number,
  ) {}

  async start(): Promise<void> {
    // Opened in batches so the listen backlog is not the thing being measured.
    for (let i = 0; i < this.count; i += 100) {
      await Promise.all(Array.from({ length: Math.min(100, this.count - i) }, () => this.connect()));
    }
    // One byte per connection per second, spread over the second.
    let slot = 0;
    this.timer = setInterval(() => {
      slot = (slot + 1) % 10;
      let i = 0;
      for (const s of this.open) {
        if (i++ % 10 !== slot) continue;
        s.write(HEAD[s.data.sent] ?? "a");
        s.data.sent++;
      }
    }, 100);
  }

  private async connect(): Promise<void> {
    if (!this.running) return;
    try {
      await Bun.connect<{ sent: number; openedAt: number }>({
        hostname: HOST,
        port: this.port,
        data: { sent: 0, openedAt: performance.now() },
        socket: {
          open: (s) => {
            this.opened++;
            s.data = { sent: 0, openedAt: performance.now() };
            this.open.add(s);
          },
          data() {},
          close: (s) => {
            if (!this.open.delete(s)) return;
            if (!this.running) return;
            this.lifetimesS.push((performance.now() - s.data.openedAt) / 1000);
            void this.connect();
          },
          error() {},
        },
      });
    } catch {
      this.failedConnects++;
      if (this.running) setTimeout(() => void this.connect(), 100);
    }
  }

  stop(): void {
    this.running = false;
    if (this.timer) clearInterval(this.timer);
    for (const s of this.open) s.end();
    this.open.clear();
  }
}

const fdCount = (pid: number) => {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return 0;
  }
};

interface Phase {
  name: string;
  w: WrkResult;
  rps: number;
  /** tether's CPU time (user + system) per completed request, and over the wall time (% of one core). */
  cpuUsPerReq: number;
  cpuPct: number;
  /** CPU taken by other processes on each core, in % of the core (a shared machine's noise). */
  noisePct: { proxy: number | null; load: number | null };
  slowOpenMin: number | null;
  rssMiB: number;
  fds: number;
}

/** CPU clock ticks of a process tree. */
function cpuTicks(pid: number): number {
  let t = 0;
  for (const p of processTree(pid)) {
    const c = cpuTimes(p);
    t += c.user + c.system;
  }
  return t;
}

function row(p: Phase, base: number): string {
  const pct = `${Math.round((p.rps / base) * 100)}%`;
  const lat = p.w.latencyUs;
  const slow = p.slowOpenMin === null ? "-" : String(p.slowOpenMin);
  const cells = [p.name, Math.round(p.rps), pct, (lat.p50 / 1000).toFixed(2), (lat.p99 / 1000).toFixed(2)];
  const noise = (x: number | null) => (x === null ? "?" : Math.round(x));
  const cpu = [
    p.cpuUsPerReq.toFixed(1),
    Math.round(p.cpuPct),
    `${noise(p.noisePct.proxy)} / ${noise(p.noisePct.load)}`,
  ];
  return `| ${[...cells, ...cpu, errorCount(p.w), slow, p.rssMiB.toFixed(1), p.fds].join(" | ")} |`;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);

async function main() {
  const opts = parseArgs(Bun.argv.slice(2));
  // Before pinning: nproc counts only the CPUs this process may use.
  const nproc = capture(["nproc"]);
  const clk = Number(capture(["getconf", "CLK_TCK"])) || 100;
  const segmentS = Math.max(1, Math.round(opts.durationS / opts.rounds));
  const dir = makeTempDir("tether-slowloris-");
  let stopping = false;
  const bail = async (why: string, code: number) => {
    if (stopping) return;
    stopping = true;
    console.error(`\n${why}: stopping every process this bench started...`);
    await stopAll();
    cleanupSync();
    process.exit(code);
  };
  process.on("SIGINT", () => void bail("interrupted", 130));
  process.on("SIGTERM", () => void bail("terminated", 143));
  const budgetS = (segmentS + 25) * (2 * opts.rounds + 1) + 60;
  setTimeout(() => void bail("time budget exceeded", 124), budgetS * 1000).unref();
  pinHarness(opts.loadCore);
  if (!Bun.which("wrk")) throw new Error("wrk is not installed (apt-get install wrk)");

  const { backends, pid: backendPid } = await startBackends(dir, 2, opts.loadCore);
  const port = freePort();
  const configPath = join(dir, "tether.json");
  writeFileSync(configPath, JSON.stringify(tetherConfig({ port, backends, persistence: true })));
  const tetherCmd = [...pin(opts.proxyCore), process.execPath, "src/main.ts", "--config", configPath];
  const tether = spawnLogged("tether", tetherCmd, join(dir, "tether.log"), REPO_ROOT);
  const ready = await waitReady(port, tether, 15_000);
  if (!ready.ready) throw new Error(`tether did not start: ${ready.reason}`);
  const pid = tether.proc.pid;

  const job = {
    url: `http://${HOST}:${port}/`,
    connections: opts.connections,
    threads: 1,
    clients: 64,
    core: Bun.which("taskset") ? opts.loadCore : null,
  };
  const measure = async (name: string, slowOpen: (() => number) | null): Promise<Phase> => {
    const t0 = cpuTicks(pid);
    const wall0 = performance.now();
    const proxy0 = sample(processTree(pid), opts.proxyCore);
    const load0 = sample([backendPid, process.pid], opts.loadCore);
    let openMin = slowOpen ? slowOpen() : null;
    const watch = setInterval(() => {
      if (slowOpen && openMin !== null) openMin = Math.min(openMin, slowOpen());
    }, 250);
    const logPath = join(dir, `wrk-${name.replace(/\W+/g, "-")}.log`);
    const { result: w, cpuS: wrkCpuS } = await runWrk({ ...job, durationS: segmentS, logPath });
    const proxy1 = sample(processTree(pid), opts.proxyCore);
    const load1 = sample([backendPid, process.pid], opts.loadCore);
    clearInterval(watch);
    const cpuS = (cpuTicks(pid) - t0) / clk;
    return {
      name,
      w,
      rps: w.requests / (w.durationUs / 1e6),
      cpuUsPerReq: (cpuS * 1e6) / Math.max(1, w.requests),
      cpuPct: (cpuS / ((performance.now() - wall0) / 1000)) * 100,
      noisePct: { proxy: othersPct(proxy0, proxy1, clk), load: othersPct(load0, load1, clk, wrkCpuS) },
      slowOpenMin: openMin,
      rssMiB: rssKiB(pid) / 1024,
      fds: fdCount(pid),
    };
  };

  console.error("warm-up...");
  await runWrk({ ...job, durationS: 3, logPath: join(dir, "wrk-warmup.log") });
  const baselines: Phase[] = [];
  const attacks: Phase[] = [];
  const phases: Phase[] = [];
  const held: { rssKiB: number; fds: number; rssBefore: number; fdsBefore: number }[] = [];
  const lifetimes: number[] = [];
  let opened = 0;
  let failedConnects = 0;
  /** This process's CPU while it drives the slow connections (it shares the load core with wrk). */
  const attackerPct: number[] = [];
  for (let round = 1; round <= opts.rounds; round++) {
    console.error(`round ${round}: baseline ${segmentS} s...`);
    const b = await measure(`baseline ${round}`, null);
    baselines.push(b);
    phases.push(b);
    const rssBefore = rssKiB(pid);
    const fdsBefore = fdCount(pid);
    console.error(`round ${round}: opening ${opts.slow} slowloris connections...`);
    const attack = new Slowloris(port, opts.slow);
    await attack.start();
    await sleep(1500);
    held.push({ rssKiB: rssKiB(pid), fds: fdCount(pid), rssBefore, fdsBefore });
    console.error(`round ${round}: under slowloris ${segmentS} s...`);
    const self0 = process.cpuUsage();
    const wall0 = performance.now();
    const a = await measure(`${opts.slow} slowloris ${round}`, () => attack.open.size);
    const self1 = process.cpuUsage(self0);
    attackerPct.push(((self1.user + self1.system) / 1000 / (performance.now() - wall0)) * 100);
    attacks.push(a);
    phases.push(a);
    attack.stop();
    lifetimes.push(...attack.lifetimesS);
    opened += attack.opened;
    failedConnects += attack.failedConnects;
    await sleep(1000);
  }
  console.error(`baseline ${opts.rounds + 1}: ${segmentS} s...`);
  const last = await measure(`baseline ${opts.rounds + 1}`, null);
  baselines.push(last);
  phases.push(last);

  // Each attack against the mean of the baselines either side of it: slow drift cancels out.
  const ratios = attacks.map((a, i) => a.rps / mean([baselines[i]?.rps ?? 0, baselines[i + 1]?.rps ?? 0]));
  const ratio = mean(ratios);
  const cpuRatio = mean(attacks.map((a) => a.cpuUsPerReq)) / mean(baselines.map((b) => b.cpuUsPerReq));
  const base = mean(baselines.map((b) => b.rps));
  lifetimes.sort((a, b) => a - b);
  const q = (f: number) =>
    lifetimes.length ? (lifetimes[Math.floor(f * (lifetimes.length - 1))] as number) : Number.NaN;
  const h = held[0] as (typeof held)[number];

  console.log(`## tether under slowloris — ${new Date().toISOString()}\n`);
  const load = loadavg()
    .map((x) => x.toFixed(2))
    .join(" ");
  console.log(`- Bun ${Bun.version}, nproc ${nproc}, load average at the end ${load}`);
  console.log(
    `- tether alone on core ${opts.proxyCore}; wrk -c${opts.connections}, the backend and the slowloris connections on core ${opts.loadCore}`,
  );
  console.log(
    `- slowloris: ${opts.slow} connections, one header byte a second each, reopened when closed; ${opts.rounds} round(s) of ${segmentS} s baseline + ${segmentS} s under slowloris, then a last baseline\n`,
  );
  console.log(
    `| phase | req/s | of mean baseline | p50 ms | p99 ms | tether CPU µs/req | tether CPU % | others' CPU % (core ${opts.proxyCore} / ${opts.loadCore}) | errors | slow conns open (min) | tether RSS MiB | tether fds |`,
  );
  console.log("|---|---|---|---|---|---|---|---|---|---|---|---|");
  for (const p of phases) console.log(row(p, base));
  console.log("");
  const verdict = ratio >= 0.8 ? "PASS" : "FAIL";
  console.log(
    `- request rate under slowloris: ${(ratio * 100).toFixed(1)}% of the baselines beside it (target at least 80%): ${verdict}`,
  );
  console.log(
    `- tether CPU per request under slowloris: ${(cpuRatio * 100).toFixed(0)}% of the baseline's (when the machine is busy with other work, req/s moves more than this)`,
  );
  console.log(
    `- holding ${opts.slow} slow connections: +${h.fds - h.fdsBefore} file descriptors; RSS ${(h.rssBefore / 1024).toFixed(1)} → ${(h.rssKiB / 1024).toFixed(1)} MiB (GC makes this rough)`,
  );
  const closed = lifetimes.length
    ? `, after ${q(0).toFixed(1)} s (min) / ${q(0.5).toFixed(1)} s (median) / ${q(1).toFixed(1)} s (max) open`
    : "";
  console.log(
    `- the slowloris side (this process, on core ${opts.loadCore} with wrk and the backend): ${mean(attackerPct).toFixed(0)}% of a core`,
  );
  console.log(
    `- slow connections opened: ${opened}; closed by tether before the end: ${lifetimes.length}${closed}; failed connects: ${failedConnects}`,
  );
  await stopAll();
  cleanupSync();
  process.exit(ratio >= 0.8 ? 0 : 1);
}

await main().catch(async (e: Error) => {
  console.error(`bench failed: ${e.message}`);
  await stopAll();
  cleanupSync();
  process.exit(1);
});
