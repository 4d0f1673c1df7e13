/**
 * `bun bench/passthrough.ts`: tether's tls-passthrough listener against
 * HAProxy in mode tcp, both sticking on the TLS session ID, in front of the
 * same three `openssl s_server -no_ticket -tls1_2` backends. See bench/README.md,
 * "TLS passthrough bench".
 *
 * Per round and peer, in a fresh proxy process pinned to the proxy core:
 * a stickiness probe (s_client -sess_out / -sess_in), then `openssl s_time`
 * on the load core: full handshakes (-new), resumed sessions (-reuse), and a
 * bulk download (-www of a large file). Proxy CPU comes from /proc. Peers are
 * interleaved; medians and same-round ratios are reported. Only 127.0.0.1.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import {
  type Machine as BaseMachine,
  machineInfo as baseMachineInfo,
  NOISY_PCT,
  pinHarness,
  splitAvailable,
} from "./lib/machine.ts";
import { rssMiB } from "./lib/measure.ts";
import {
  BULK_PATH,
  measureSTime,
  runSTime,
  type STimeJob,
  startTlsBackends,
  stickyProbe,
  type TlsBackend,
} from "./lib/passthrough-openssl.ts";
import { type PtOptions, parsePtOptions, ptUsage } from "./lib/passthrough-options.ts";
import { makePtPeers, type PtPeer, type PtRunning } from "./lib/passthrough-peers.ts";
import { type Measure, type PtRecord, ptRatios, ptTable, summarizePt } from "./lib/passthrough-report.ts";
import { capture, cleanupSync, installCleanup, makeTempDir, sleep, stopAll } from "./lib/procs.ts";

const REPO_ROOT = resolve(import.meta.dir, "..");
const BACKENDS = 3;
type Machine = BaseMachine & { openssl: string };

function machineInfo(): Machine {
  return {
    ...baseMachineInfo("bench/passthrough.ts"),
    openssl: /OpenSSL (\S+)/.exec(capture(["openssl", "version"]))?.[1] ?? "?",
  };
}

interface Ctx {
  opts: PtOptions;
  dir: string;
  backends: TlsBackend[];
  clk: number;
  /** Negotiated by the first readiness handshake. */
  cipher: string;
}

/** One measured s_time group, with the proxy's CPU and both cores' noise. */
function measure(ctx: Ctx, run: PtRunning, job: STimeJob, clients: number, tag: string): Promise<Measure> {
  const { opts } = ctx;
  return measureSTime(job, clients, {
    proxyPids: run.measuredPids(),
    loadPids: ctx.backends.map((b) => b.child.proc.pid),
    proxyCore: opts.proxyCore,
    loadCore: opts.loadCore,
    clk: ctx.clk,
    logPrefix: join(ctx.dir, `s_time-${tag}`),
  });
}

/** One fresh start of `peer`: probe, warm-up, the three measured runs, stop. */
async function measureOnce(ctx: Ctx, peer: PtPeer, round: number): Promise<PtRecord> {
  const { opts } = ctx;
  const run = await peer.start(ctx.dir, ctx.backends, opts.proxyCore, REPO_ROOT);
  if (ctx.cipher === "?") ctx.cipher = run.cipher;
  const rec: PtRecord = {
    round,
    peer: peer.name,
    sticky: null,
    full: null,
    resumed: null,
    bulk: null,
    learned: null,
    rssMiB: null,
    errors: [],
  };
  const attempt = async (what: string, f: () => Promise<void>) => {
    try {
      await f();
    } catch (e) {
      rec.errors.push(`${what}: ${(e as Error).message.split("\n")[0]}`);
    }
  };
  try {
    if (peer.name !== "direct")
      await attempt("sticky probe", async () => {
        rec.sticky = await stickyProbe(run.port, ctx.dir);
      });
    const base = { port: run.port, durationS: opts.durationS };
    // Unmeasured: lets Bun's JIT compile and both proxies fill their tables before the clock starts.
    if (opts.warmupS > 0)
      await attempt("warm-up", async () => {
        await runSTime(
          { ...base, mode: "new", durationS: opts.warmupS },
          opts.clients,
          opts.loadCore,
          join(ctx.dir, "s_time-warm"),
        );
      });
    await attempt("full handshakes", async () => {
      rec.full = await measure(ctx, run, { ...base, mode: "new" }, opts.clients, "new");
    });
    await attempt("resumed handshakes", async () => {
      rec.resumed = await measure(ctx, run, { ...base, mode: "reuse" }, opts.clients, "reuse");
    });
    await attempt("bulk", async () => {
      rec.bulk = await measure(ctx, run, { ...base, mode: "new", page: BULK_PATH }, 1, "bulk");
    });
    const pids = run.measuredPids();
    rec.rssMiB = pids.length ? rssMiB(pids) : null;
    rec.learned = await run.learnedSessions();
  } finally {
    await run.stop();
  }
  return rec;
}

/** What a run should take (s_time runs up to a second past -time), with margin: 1.5× plus a minute. */
export function budgetMs(opts: PtOptions): number {
  const perRun = 3 + (opts.warmupS > 0 ? opts.warmupS + 1 : 0) + 3 * (opts.durationS + 1) + 3;
  return ((perRun * opts.peers.length * opts.rounds + 10) * 1.5 + 60) * 1000;
}

function header(m: Machine, opts: PtOptions, peers: PtPeer[], cipher: string): string {
  const versions = peers
    .filter((p) => p.unavailable() === null && p.version())
    .map((p) => `${p.name} ${p.version()}`);
  const pinned = Bun.which("taskset") ? "" : " (taskset missing: NOT pinned)";
  return [
    `## tether TLS passthrough bench — ${m.date}`,
    "",
    `- machine: ${m.cpuModel}, nproc ${m.nproc}, ${m.kernel}, load average at start ${m.loadAvg.join(" ")}`,
    `- versions: ${[`Bun ${m.bun}`, `OpenSSL ${m.openssl}`, ...versions].join(" · ")}`,
    `- command: \`${m.command}\``,
    `- backends: ${BACKENDS} × \`openssl s_server -WWW -no_ticket -tls1_2 -ignore_unexpected_eof\` (own P-256 certificate each; session cache on, tickets off); cipher ${cipher}`,
    `- load: \`openssl s_time -tls1_2 -time ${opts.durationS}\` × ${opts.clients} in parallel for -new and -reuse; × 1 with \`-new -www ${BULK_PATH}\` (${opts.fileMiB} MiB) for bulk · ${opts.warmupS} s unmeasured -new first · ${opts.rounds} interleaved round(s), medians shown`,
    `- cores: proxy on CPU ${opts.proxyCore}; s_time, s_server and this harness on CPU ${opts.loadCore}${pinned}`,
  ].join("\n");
}

function notesFor(
  skipped: Record<string, string>,
  failures: Record<string, string>,
  records: PtRecord[],
  peers: PtPeer[],
): string[] {
  const notes: string[] = [];
  for (const [name, why] of Object.entries(skipped)) notes.push(`${name} SKIPPED: ${why}`);
  for (const [name, why] of Object.entries(failures)) notes.push(`${name} failed and was dropped: ${why}`);
  for (const r of records) for (const e of r.errors) notes.push(`round ${r.round} ${r.peer}: ${e}`);
  for (const r of records)
    if (r.sticky && !r.sticky.ok)
      notes.push(`round ${r.round} ${r.peer}: sticky probe failed (${r.sticky.detail})`);
  if (peers.some((p) => p.name === "haproxy" && !skipped.haproxy))
    notes.push(
      "haproxy: the 2.6 manual's SSL session ID persistence config (stick on req.payload_lv(43,1), stick store-response res.payload_lv(43,1)) plus `tcp-response inspect-delay 5s` (without it nothing is learned) and `balance source` as the fallback, the counterpart of tether's client-ip rule",
    );
  if (peers.some((p) => p.name === "direct"))
    notes.push("direct: s_time straight at backend app-1, no proxy: the ceiling of the load core");
  const noisy = records.filter((r) =>
    [r.full, r.resumed, r.bulk].some(
      (m) => m && Math.max(m.noisePct.proxy ?? 0, m.noisePct.load ?? 0) > NOISY_PCT,
    ),
  );
  if (noisy.length)
    notes.push(
      `NOISY: ${noisy.length} of ${records.length} runs lost more than ${NOISY_PCT}% of a core to other processes; rerun on a quiet machine before quoting numbers`,
    );
  return notes;
}

async function main(): Promise<void> {
  const opts = parsePtOptions(Bun.argv.slice(2));
  if (opts.help) {
    console.log(ptUsage());
    return;
  }
  if (!Bun.which("openssl")) throw new Error("openssl is not installed (apt-get install openssl)");
  installCleanup(budgetMs(opts));
  // Before pinning: nproc counts only the CPUs this process may use.
  const machine = machineInfo();
  pinHarness(opts.loadCore);
  const peers = makePtPeers(opts.peers);
  const { active, skipped } = splitAvailable(peers);

  const dir = makeTempDir("tether-pt-bench-");
  const records: PtRecord[] = [];
  const failures: Record<string, string> = {};
  let cipher = "?";
  try {
    process.stderr.write(`starting ${BACKENDS} s_server backends ... `);
    const backends = await startTlsBackends(dir, BACKENDS, opts.loadCore, opts.fileMiB);
    process.stderr.write(`ports ${backends.map((b) => b.port).join(", ")}\n`);
    const ctx: Ctx = { opts, dir, backends, clk: machine.clockTicks, cipher: "?" };
    for (let round = 1; round <= opts.rounds; round++) {
      for (const peer of active) {
        if (failures[peer.name]) continue;
        process.stderr.write(`round ${round}/${opts.rounds}: ${peer.name} ... `);
        const t0 = performance.now();
        try {
          const r = await measureOnce(ctx, peer, round);
          records.push(r);
          const rate = (m: Measure | null) => (m ? Math.round(m.connections / m.wallS) : "—");
          const mbps = r.bulk ? Math.round(r.bulk.bytes / 1e6 / r.bulk.wallS) : "—";
          process.stderr.write(
            `${rate(r.full)} new/s, ${rate(r.resumed)} resumed/s, ${mbps} MB/s${r.errors.length ? ` (${r.errors.length} errors)` : ""} [${((performance.now() - t0) / 1000).toFixed(1)} s]\n`,
          );
        } catch (e) {
          failures[peer.name] = (e as Error).message.split("\n")[0] ?? "";
          process.stderr.write(`FAILED\n${(e as Error).message}\n`);
        }
        // Let TIME_WAIT sockets and the previous process's exit settle before the next peer.
        await sleep(300);
      }
    }
    cipher = ctx.cipher;
  } finally {
    await stopAll();
  }
  report(machine, opts, peers, skipped, failures, records, cipher);
  if (records.length === 0) process.exitCode = 1;
  cleanupSync();
}

function report(
  m: Machine,
  opts: PtOptions,
  peers: PtPeer[],
  skipped: Record<string, string>,
  failures: Record<string, string>,
  records: PtRecord[],
  cipher: string,
): void {
  const summary = summarizePt(records, opts.peers);
  const ratio = ptRatios(records);
  const notes = notesFor(skipped, failures, records, peers);
  console.log(header(m, opts, peers, cipher));
  for (const [name, why] of Object.entries(skipped)) console.log(`- SKIPPED ${name}: ${why}`);
  console.log(`\n${ptTable(summary, ratio)}\n`);
  if (ratio.rounds > 0)
    console.log(
      "tether ÷ haproxy: median of same-round ratios. Rates above 1 favour tether; CPU and RSS below 1 favour tether.\n",
    );
  if (notes.length) console.log(`Notes:\n${notes.map((n) => `- ${n}`).join("\n")}\n`);

  const outDir = resolve(REPO_ROOT, opts.outDir);
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `passthrough-${m.date.replace(/[:.]/g, "-")}.json`);
  const configs = Object.fromEntries(peers.filter((p) => p.lastConfig).map((p) => [p.name, p.lastConfig]));
  const versions = Object.fromEntries(peers.map((p) => [p.name, p.unavailable() ? null : p.version()]));
  writeFileSync(
    file,
    `${JSON.stringify({ machine: m, options: opts, versions, cipher, summary, ratio, notes, configs, runs: records }, null, 2)}\n`,
  );
  console.log(`results: ${file}`);
}

if (import.meta.main) {
  await main().catch(async (e: Error) => {
    console.error(`passthrough bench failed: ${e.message}`);
    await stopAll();
    cleanupSync();
    process.exitCode = 1;
  });
  // Everything is stopped and reported; stopChild's grace timers would only hold the exit back.
  process.exit();
}
