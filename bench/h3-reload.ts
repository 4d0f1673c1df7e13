/**
 * What a SIGHUP reload does to live HTTP/3 (QUIC) connections.
 *
 *   bun bench/h3-reload.ts [--reloads 5] [--gap-ms 4000] [--grace-ms 2000] [--loops 4]
 *
 * tether with one https listener (protocols http/1.1, h2, h3; the repo's
 * development certificate) in front of the bench backends, and headless
 * Chromium forced onto QUIC for that origin (the flags in
 * test/support/chromium.ts). The page runs `--loops` fetch loops, one request
 * after another each, on its open QUIC connection, for the whole run. While
 * they run, tether is reloaded `--reloads` times with a change it applies in
 * place (a backend weight), then `--reloads` times with one that reopens the
 * listener (the client idle timeout, a socket setting), `--gap-ms` apart.
 * Each request is timed in the page and counted in the window of the reload
 * before it; its protocol comes from Resource Timing's nextHopProtocol.
 *
 * tether's shutdownGraceMs is set to `--grace-ms` (2000), under the gap, so
 * that a reopened listener's old socket has drained and closed (stop(true)
 * once its requests are done or the grace is over) before the next reload.
 *
 * Prints one Markdown table: per window, requests, failed requests (fetch
 * rejected, or no answer within 5 s), the protocols used, and the QUIC
 * connections Chromium opened (from its NetLog, --log-net-log): a reload that
 * cut the live connection shows up as a new one.
 */
import { writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { launchChromium, quicFlags } from "../test/support/chromium.ts";
import { type Child, spawnCli } from "../test/support/tether.ts";
import { startBackends } from "./lib/backends.ts";
import type { Backend } from "./lib/configs.ts";
import { readFlags } from "./lib/flags.ts";
import { machineInfo } from "./lib/machine.ts";
import { cleanupSync, makeTempDir, sleep, stopAll } from "./lib/procs.ts";

const REPO_ROOT = resolve(import.meta.dir, "..");
const CERT = join(REPO_ROOT, "certs/dev.pem");
const KEY = join(REPO_ROOT, "certs/dev-key.pem");

interface Opts {
  reloads: number;
  gapMs: number;
  graceMs: number;
  loops: number;
}

function parseOpts(argv: string[]): Opts & { help: boolean } {
  const known = ["--reloads", "--gap-ms", "--grace-ms", "--loops"];
  const flags = readFlags(argv, (f) => known.includes(f));
  const get = (f: string, d: number) => {
    const raw = flags.values.findLast(([k]) => k === f)?.[1];
    const n = raw === undefined ? d : Number(raw);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${f} must be a positive integer`);
    return n;
  };
  return {
    help: flags.help,
    reloads: get("--reloads", flags.quick ? 2 : 5),
    gapMs: get("--gap-ms", flags.quick ? 3000 : 4000),
    graceMs: get("--grace-ms", 2000),
    loops: get("--loops", 4),
  };
}

function config(port: number, backends: Backend[], weight: number, clientIdleMs: number, graceMs: number) {
  return {
    shutdownGraceMs: graceMs,
    listeners: [
      {
        name: "secure",
        protocol: "https",
        address: `127.0.0.1:${port}`,
        pool: "app",
        tls: { certificates: [{ cert: CERT, key: KEY }] },
        protocols: ["http/1.1", "h2", "h3"],
        clientIdleMs,
      },
    ],
    pools: {
      app: {
        backends: backends.map((b) => ({ id: b.id, url: `http://127.0.0.1:${b.port}`, weight })),
        persistence: [{ type: "cookie", mode: "insert", name: "TETHER" }],
      },
    },
    accessLog: false,
    snapshot: false,
  };
}

/** One request as the page saw it. */
interface Sample {
  at: number;
  ok: boolean;
  protocol: string;
  error: string;
}

/** Runs in the page: `loops` back-to-back fetch loops until window.__stop, each request recorded. */
const PAGE_LOAD = `(loops) => {
  const samples = [];
  window.__samples = samples;
  window.__stop = false;
  let n = 0;
  const protocolOf = (url) => {
    const e = performance.getEntriesByName(url).at(-1);
    return e ? e.nextHopProtocol || "unknown" : "not recorded";
  };
  const loop = async () => {
    while (!window.__stop) {
      const url = location.origin + "/?n=" + n++;
      const at = Date.now();
      try {
        const res = await fetch(url, { cache: "no-store", signal: AbortSignal.timeout(5000) });
        await res.text();
        samples.push({ at, ok: res.ok, protocol: protocolOf(url), error: res.ok ? "" : "HTTP " + res.status });
      } catch (e) {
        samples.push({ at, ok: false, protocol: protocolOf(url), error: String(e && e.message || e) });
      }
      if (performance.getEntriesByType("resource").length > 200) performance.clearResourceTimings();
    }
  };
  for (let i = 0; i < loops; i++) loop();
}`;

interface Reload {
  kind: "none" | "in place" | "reopens the listener";
  at: number;
}

async function reload(child: Child, file: string, cfg: object): Promise<number> {
  const before = child.lines.filter((l) => l.msg === "config reloaded").length;
  writeFileSync(file, JSON.stringify(cfg));
  const at = Date.now();
  child.proc.kill("SIGHUP");
  await child.waitFor(() => child.lines.filter((l) => l.msg === "config reloaded").length === before + 1);
  return at;
}

/** When Chromium began each QUIC connection (epoch ms), from its NetLog file. */
export function quicSessionStarts(netlog: string): number[] {
  let log: {
    constants: {
      logSourceType: Record<string, number>;
      logEventTypes: Record<string, number>;
      timeTickOffset: string;
    };
    events: { type: number; phase: number; time: string; source: { type: number; id: number } }[];
  };
  try {
    log = JSON.parse(netlog);
  } catch {
    // A browser that did not shut down cleanly leaves the events array open.
    log = JSON.parse(`${netlog.replace(/,\s*$/, "")}]}`);
  }
  const { logSourceType, logEventTypes, timeTickOffset } = log.constants;
  const BEGIN = 1;
  return log.events
    .filter(
      (e) =>
        e.source.type === logSourceType.QUIC_SESSION &&
        e.type === logEventTypes.QUIC_SESSION &&
        e.phase === BEGIN,
    )
    .map((e) => Number(timeTickOffset) + Number(e.time));
}

function table(samples: Sample[], reloads: Reload[], end: number, sessions: number[]): string {
  const rows = [
    "| window | reload before it | requests | failed | protocols | QUIC connections opened (ms after the SIGHUP) | errors (ms after the SIGHUP) |",
    "|---|---|---:|---:|---|---|---|",
  ];
  reloads.forEach((r, i) => {
    const until = reloads[i + 1]?.at ?? end;
    const inside = samples.filter((s) => s.at >= r.at && s.at < until);
    const failed = inside.filter((s) => !s.ok);
    const count = (xs: string[]) => {
      const m = new Map<string, number>();
      for (const x of xs) m.set(x, (m.get(x) ?? 0) + 1);
      return [...m].map(([k, v]) => `${k} ${v}`).join(", ");
    };
    const opened = sessions.filter((t) => t >= r.at && t < until).map((t) => Math.round(t - r.at));
    const errorsAt = failed.map((s) => Math.round(s.at - r.at)).join(", ");
    rows.push(
      `| ${i} | ${r.kind} | ${inside.length} | ${failed.length} | ${count(inside.map((s) => s.protocol))} | ${opened.length}${opened.length ? ` (${opened.join(", ")})` : ""} | ${count(failed.map((s) => s.error.slice(0, 60)))}${errorsAt ? ` (${errorsAt})` : ""} |`,
    );
  });
  return rows.join("\n");
}

async function main(): Promise<void> {
  const opts = parseOpts(Bun.argv.slice(2));
  if (opts.help) {
    console.log(
      "usage: bun bench/h3-reload.ts [--quick] [--reloads 5] [--gap-ms 4000] [--grace-ms 2000] [--loops 4]",
    );
    return;
  }
  const m = machineInfo("bench/h3-reload.ts");
  process.on("SIGINT", () => {
    cleanupSync();
    process.exit(130);
  });
  const dir = makeTempDir("tether-h3-reload-");
  let child: Child | null = null;
  try {
    const { backends } = await startBackends(dir, 3, "0-1");
    const file = join(dir, "tether.json");
    const cfg = (port: number, weight: number, idleMs: number) =>
      config(port, backends, weight, idleMs, opts.graceMs);
    writeFileSync(file, JSON.stringify(cfg(0, 1, 60_000)));
    child = spawnCli(["--config", file]);
    const port = await child.listening("secure");
    // Writing the chosen port out is itself a reopen (address changes): done before any load.
    await reload(child, file, cfg(port, 1, 60_000));
    const netlog = join(dir, "netlog.json");
    const browser = await launchChromium([...quicFlags(port, CERT), `--log-net-log=${netlog}`]);
    let closed = false;
    try {
      const page = await (await browser.newContext({ ignoreHTTPSErrors: true })).newPage();
      await page.goto(`https://127.0.0.1:${port}/`);
      const first = await page.evaluate('performance.getEntriesByType("navigation")[0].nextHopProtocol');
      if (first !== "h3") throw new Error(`Chromium loaded the page over ${first}, not h3`);
      await page.evaluate(`(${PAGE_LOAD})(${opts.loops})`);
      const reloads: Reload[] = [{ kind: "none", at: Date.now() }];
      await sleep(opts.gapMs);
      for (let i = 1; i <= opts.reloads; i++) {
        const at = await reload(child, file, cfg(port, 1 + i, 60_000));
        reloads.push({ kind: "in place", at });
        await sleep(opts.gapMs);
      }
      for (let i = 1; i <= opts.reloads; i++) {
        const at = await reload(child, file, cfg(port, 1, 60_000 + i * 1000));
        reloads.push({ kind: "reopens the listener", at });
        await sleep(opts.gapMs);
      }
      const end = Date.now();
      await page.evaluate("window.__stop = true");
      await sleep(500);
      const samples = (await page.evaluate("window.__samples")) as Sample[];
      // Not counting the reopen that wrote the port out, before the load.
      const closing = child.lines.filter((l) => l.msg === "listener closing").length - 1;
      const version = browser.version();
      await browser.close();
      closed = true;
      const sessions = quicSessionStarts(await Bun.file(netlog).text());
      const before = sessions.filter((t) => t < (reloads[0]?.at ?? 0)).length;
      console.log(`# SIGHUP and live HTTP/3 connections, ${m.date}\n`);
      console.log(
        `- ${m.cpuModel}, nproc ${m.nproc}, ${m.kernel}, Bun ${m.bun}, load ${m.loadAvg.join(" ")}`,
      );
      console.log(`- command: \`${m.command}\``);
      console.log(
        `- Chromium ${version} forced onto QUIC, ${opts.loops} fetch loops; ${opts.reloads} reloads in place, then ${opts.reloads} that reopen the listener (tether logged "listener closing" ${closing} times), ${opts.gapMs} ms apart; shutdownGraceMs ${opts.graceMs}; QUIC connections opened before the load: ${before}\n`,
      );
      console.log(table(samples, reloads, end, sessions));
    } finally {
      if (!closed) await browser.close();
    }
  } finally {
    if (child && child.proc.exitCode === null) await child.stop();
    await stopAll();
    cleanupSync();
  }
}

if (import.meta.main) {
  await main();
  process.exit();
}
