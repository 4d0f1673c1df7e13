/**
 * TLS termination handshakes: tether's https listener against HAProxy
 * `bind ... ssl crt`, same certificate (self-signed P-256), same 3 HTTP
 * backends (bench/backend.ts), cookie insert on both.
 *
 *   bun bench/tls.ts [--rounds 3] [--duration 3] [--clients 2] [--binary]
 *
 * Per round and peer, a fresh proxy pinned to the proxy core; `openssl s_time
 * -tls1_2` on the load core: full handshakes (-new) then resumed ones
 * (-reuse), each for --duration seconds after an unmeasured -new warm-up. The
 * handshake-only runs never reach a backend. Rates and proxy CPU per
 * handshake are medians over rounds; ratios are tether ÷ HAProxy, same round.
 */
import { writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { makeCert } from "../test/support/certs.ts";
import { startBackends } from "./lib/backends.ts";
import { type Backend, haproxyConfig, tetherConfig } from "./lib/configs.ts";
import { readFlags } from "./lib/flags.ts";
import { machineInfo, NOISY_PCT, pinHarness } from "./lib/machine.ts";
import { freePort, HOST } from "./lib/net.ts";
import { measureSTime, runSTime, type STimeMode, waitHandshake } from "./lib/passthrough-openssl.ts";
import type { Measure } from "./lib/passthrough-report.ts";
import { pin } from "./lib/peers.ts";
import {
  type Child,
  cleanupSync,
  isRunning,
  makeTempDir,
  spawnLogged,
  stopAll,
  stopChild,
} from "./lib/procs.ts";
import { median } from "./lib/report.ts";

const REPO_ROOT = resolve(import.meta.dir, "..");
type PeerName = "tether" | "haproxy";

interface Opts {
  rounds: number;
  durationS: number;
  clients: number;
  binary: boolean;
  proxyCore: string;
  loadCore: string;
}

async function startPeer(
  name: PeerName,
  opts: Opts,
  dir: string,
  cert: { cert: string; key: string; pem: string },
  backends: Backend[],
): Promise<{ port: number; child: Child; cipher: string }> {
  const port = freePort();
  let cmd: string[];
  if (name === "tether") {
    const cfg = tetherConfig({ port, backends, persistence: true }) as { listeners: object[] };
    cfg.listeners = [
      {
        name: "websecure",
        protocol: "https",
        address: `${HOST}:${port}`,
        pool: "app",
        tls: { certificates: [{ cert: cert.cert, key: cert.key }] },
      },
    ];
    const path = join(dir, "tether.json");
    writeFileSync(path, JSON.stringify(cfg));
    const bin = opts.binary ? [join(REPO_ROOT, "dist/tether")] : [process.execPath, "src/main.ts"];
    cmd = [...bin, "--config", path];
  } else {
    const path = join(dir, "haproxy.cfg");
    writeFileSync(path, haproxyConfig(port, backends, cert.pem));
    cmd = ["haproxy", "-db", "-f", path];
  }
  const child = spawnLogged(name, [...pin(opts.proxyCore), ...cmd], join(dir, `${name}.log`), REPO_ROOT);
  const ready = await waitHandshake(port, () => isRunning(child), 15_000);
  if (!ready.ready) {
    await stopChild(child);
    throw new Error(`${name} did not start: ${ready.reason}`);
  }
  return { port, child, cipher: ready.cipher };
}

function parseOpts(argv: string[]): Opts & { help: boolean } {
  const known = ["--rounds", "--duration", "--clients", "--proxy-core", "--load-core"];
  const flags = readFlags(
    argv.filter((a) => a !== "--binary"),
    (f) => known.includes(f),
  );
  const get = (f: string, d: string) => flags.values.findLast(([k]) => k === f)?.[1] ?? d;
  return {
    help: flags.help,
    rounds: Number(get("--rounds", flags.quick ? "1" : "3")),
    durationS: Number(get("--duration", flags.quick ? "1" : "3")),
    clients: Number(get("--clients", "2")),
    binary: argv.includes("--binary"),
    proxyCore: get("--proxy-core", "0"),
    loadCore: get("--load-core", "1"),
  };
}

async function main(): Promise<void> {
  const opts = parseOpts(Bun.argv.slice(2));
  if (opts.help) {
    console.log(
      "usage: bun bench/tls.ts [--quick] [--rounds 3] [--duration 3] [--clients 2] [--binary] [--proxy-core 0] [--load-core 1]",
    );
    return;
  }
  for (const p of ["openssl", "haproxy"])
    if (!Bun.which(p)) throw new Error(`${p} is not installed (apt-get install ${p})`);
  const m = machineInfo("bench/tls.ts");
  process.on("SIGINT", () => {
    cleanupSync();
    process.exit(130);
  });
  // The harness stays off the proxy core.
  pinHarness(opts.loadCore);
  const dir = makeTempDir("tether-tls-bench-");
  const runs: { round: number; peer: PeerName; mode: STimeMode; m: Measure }[] = [];
  const ciphers = new Map<PeerName, string>();
  try {
    const { backends, pid: backendsPid } = await startBackends(dir, 3, opts.loadCore);
    const c = await makeCert(dir, "localhost");
    const pem = join(dir, "haproxy.pem");
    writeFileSync(pem, (await Bun.file(c.cert).text()) + (await Bun.file(c.key).text()));
    const cert = { ...c, pem };
    for (let round = 1; round <= opts.rounds; round++) {
      for (const peer of ["tether", "haproxy"] as const) {
        const p = await startPeer(peer, opts, dir, cert, backends);
        ciphers.set(peer, p.cipher);
        try {
          const job = { port: p.port, durationS: opts.durationS };
          // Unmeasured: JIT warm-up for tether, session caches for both.
          await runSTime(
            { ...job, mode: "new", durationS: 1 },
            opts.clients,
            opts.loadCore,
            join(dir, "warm"),
          );
          for (const mode of ["new", "reuse"] as const) {
            const r = await measureSTime({ ...job, mode }, opts.clients, {
              proxyPids: [p.child.proc.pid],
              loadPids: [backendsPid],
              proxyCore: opts.proxyCore,
              loadCore: opts.loadCore,
              clk: m.clockTicks,
              logPrefix: join(dir, `s_time-${peer}-${mode}`),
            });
            runs.push({ round, peer, mode, m: r });
            console.error(
              `round ${round} ${peer} -${mode}: ${Math.round(r.connections / r.wallS)}/s (${r.full} full, ${r.resumed} resumed)`,
            );
          }
        } finally {
          await stopChild(p.child);
        }
      }
    }
  } finally {
    await stopAll();
    cleanupSync();
  }
  report(m, opts, runs, ciphers);
}

function report(
  m: ReturnType<typeof machineInfo>,
  opts: Opts,
  runs: { round: number; peer: PeerName; mode: STimeMode; m: Measure }[],
  ciphers: Map<PeerName, string>,
): void {
  const rate = (x: Measure) => x.connections / x.wallS;
  const cpuUs = (x: Measure) => ((x.cpuS ?? 0) * 1e6) / Math.max(1, x.connections);
  const pick = (peer: PeerName, mode: STimeMode) => runs.filter((r) => r.peer === peer && r.mode === mode);
  console.log(`# TLS termination handshakes, ${m.date}\n`);
  console.log(`- ${m.cpuModel}, nproc ${m.nproc}, ${m.kernel}, Bun ${m.bun}, load ${m.loadAvg.join(" ")}`);
  console.log(`- command: \`${m.command}\`; tether ${opts.binary ? "dist/tether" : "bun src/main.ts"}`);
  console.log(
    `- \`openssl s_time -tls1_2 -time ${opts.durationS}\` × ${opts.clients} on CPU ${opts.loadCore}; proxy on CPU ${opts.proxyCore}; ${opts.rounds} round(s); ciphers: ${[...ciphers].map(([p, c]) => `${p} ${c}`).join(", ")}\n`,
  );
  console.log("| peer | handshakes | per s | proxy CPU µs each | resumed of all |\n|---|---|---:|---:|---:|");
  for (const mode of ["new", "reuse"] as const)
    for (const peer of ["tether", "haproxy"] as const) {
      const xs = pick(peer, mode).map((r) => r.m);
      if (!xs.length) continue;
      const resumed =
        xs.reduce((n, x) => n + x.resumed, 0) /
        Math.max(
          1,
          xs.reduce((n, x) => n + x.connections, 0),
        );
      console.log(
        `| ${peer} | ${mode === "new" ? "full" : "resumed"} | ${Math.round(median(xs.map(rate)))} | ${median(xs.map(cpuUs)).toFixed(0)} | ${(resumed * 100).toFixed(0)}% |`,
      );
    }
  console.log(
    "\ntether ÷ HAProxy, median of same-round ratios (rate: above 1 favours tether; CPU: below 1):\n",
  );
  for (const mode of ["new", "reuse"] as const) {
    const rates: number[] = [];
    const cpus: number[] = [];
    for (let round = 1; round <= opts.rounds; round++) {
      const t = pick("tether", mode).find((r) => r.round === round)?.m;
      const h = pick("haproxy", mode).find((r) => r.round === round)?.m;
      if (!t || !h) continue;
      rates.push(rate(t) / rate(h));
      cpus.push(cpuUs(t) / cpuUs(h));
    }
    if (rates.length)
      console.log(
        `- ${mode === "new" ? "full" : "resumed"} handshakes: rate ${median(rates).toFixed(2)}×, proxy CPU each ${median(cpus).toFixed(2)}×`,
      );
  }
  const noisy = runs.filter((r) => Math.max(r.m.noisePct.proxy ?? 0, r.m.noisePct.load ?? 0) > NOISY_PCT);
  if (noisy.length)
    console.log(
      `\nNOISY: ${noisy.length} of ${runs.length} runs lost more than ${NOISY_PCT}% of a core to other processes`,
    );
}

await main();
process.exit();
