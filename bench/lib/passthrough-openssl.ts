/**
 * The TLS side of the passthrough bench, all openssl: backends
 * (`s_server -WWW -no_ticket -tls1_2`, one certificate subject each), the
 * load (`s_time`, pinned to the load core) and probes (`s_client`). Every
 * long-lived process goes through procs.ts, so it is stopped on exit.
 */

import { closeSync, ftruncateSync, mkdirSync, openSync } from "node:fs";
import { join } from "node:path";
import { makeCert } from "../../test/support/certs.ts";
import { othersPct, sample } from "./measure.ts";
import { HOST } from "./net.ts";
import type { Measure } from "./passthrough-report.ts";
import { pin } from "./peers.ts";
import { type Child, isRunning, logTail, sleep, spawnLogged, stopChild } from "./procs.ts";

export interface TlsBackend {
  id: string;
  port: number;
  child: Child;
}

/** The file the bulk run downloads, in the backends' -WWW folder. */
export const BULK_PATH = "/bulk.bin";

/** The s_server command line; -WWW serves files from its working folder, which holds only the bulk file. */
export function sServerCommand(cert: { cert: string; key: string }): string[] {
  return [
    "openssl",
    "s_server",
    "-accept",
    `${HOST}:0`,
    "-cert",
    cert.cert,
    "-key",
    cert.key,
    "-WWW",
    "-no_ticket",
    "-tls1_2",
    "-ignore_unexpected_eof",
  ];
}

/**
 * `count` s_server backends pinned to the load core, on OS-chosen ports (read
 * from their "ACCEPT 127.0.0.1:port" line), all serving one sparse file of
 * `fileMiB` MiB for the bulk run.
 */
export async function startTlsBackends(
  dir: string,
  count: number,
  loadCore: string,
  fileMiB: number,
): Promise<TlsBackend[]> {
  const www = join(dir, "www");
  mkdirSync(www, { recursive: true });
  // Sparse: no disk and no page cache to warm; TLS encrypts zeros like anything else.
  const fd = openSync(join(www, BULK_PATH.slice(1)), "w");
  ftruncateSync(fd, fileMiB * 1024 * 1024);
  closeSync(fd);
  const out: TlsBackend[] = [];
  for (let i = 1; i <= count; i++) {
    const id = `app-${i}`;
    const cert = await makeCert(dir, id);
    const log = join(dir, `s_server-${id}.log`);
    const child = spawnLogged(`s_server ${id}`, [...pin(loadCore), ...sServerCommand(cert)], log, www);
    let port = 0;
    for (let waited = 0; waited < 5000 && port === 0; waited += 25) {
      const m = /ACCEPT [^\s]*:(\d+)/.exec(await Bun.file(log).text());
      if (m) port = Number(m[1]);
      else if (!isRunning(child)) break;
      else await sleep(25);
    }
    if (port === 0) {
      await stopChild(child);
      throw new Error(`openssl s_server ${id} did not start:\n${logTail(child)}`);
    }
    out.push({ id, port, child });
  }
  return out;
}

/** `openssl s_client` with "Q" on stdin: handshake, print, quit. Output is stdout + stderr. */
export async function sClient(port: number, args: string[], timeoutMs = 5000): Promise<string> {
  const p = Bun.spawn(["openssl", "s_client", "-connect", `${HOST}:${port}`, ...args], {
    stdin: new TextEncoder().encode("Q\n"),
    stdout: "pipe",
    stderr: "pipe",
    timeout: timeoutMs,
  });
  const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  await p.exited;
  return out + err;
}

/** Which backend answered: the CN of the certificate s_client printed. */
export const peerCn = (out: string): string | null => /subject=\s*CN\s*=\s*([^\s,/]+)/.exec(out)?.[1] ?? null;

/** Waits until a TLS 1.2 handshake through `port` completes (so the backends are reachable too). */
export async function waitHandshake(
  port: number,
  alive: () => boolean,
  timeoutMs: number,
): Promise<{ ready: true; cipher: string } | { ready: false; reason: string }> {
  const deadline = Date.now() + timeoutMs;
  let last = "no answer";
  while (Date.now() < deadline) {
    if (!alive()) return { ready: false, reason: "exited" };
    const out = await sClient(port, ["-tls1_2", "-no_ticket"], 2000);
    if (out.includes("New, TLSv1.2")) {
      return { ready: true, cipher: /Cipher is (\S+)/.exec(out)?.[1] ?? "?" };
    }
    last = out.trim().split("\n").at(-1) ?? last;
    await sleep(100);
  }
  return { ready: false, reason: `no TLS handshake after ${timeoutMs} ms (${last.slice(0, 160)})` };
}

export interface StickyResult {
  ok: boolean;
  /** Backend that issued the session. */
  backend: string | null;
  detail: string;
}

/**
 * One full handshake saved with -sess_out, then `n` resumptions with -sess_in:
 * every one must say "Reused" and show the issuer's certificate.
 */
export async function stickyProbe(port: number, dir: string, n = 5): Promise<StickyResult> {
  const sess = join(dir, `probe-${port}.pem`);
  const first = await sClient(port, ["-tls1_2", "-no_ticket", "-sess_out", sess]);
  const backend = peerCn(first);
  if (!first.includes("New, TLSv1.2") || !backend)
    return { ok: false, backend, detail: "no full TLS 1.2 handshake" };
  for (let i = 0; i < n; i++) {
    const out = await sClient(port, ["-tls1_2", "-no_ticket", "-sess_in", sess]);
    if (!out.includes("Reused, TLSv1.2") || peerCn(out) !== backend)
      return { ok: false, backend, detail: `resumption ${i + 1} reached ${peerCn(out)}, not reused` };
  }
  return { ok: true, backend, detail: `${n} of ${n} resumed on ${backend}` };
}

export type STimeMode = "new" | "reuse";

export interface STimeJob {
  port: number;
  mode: STimeMode;
  durationS: number;
  /** Download this path after each handshake (s_time -www). */
  page?: string;
}

export function sTimeCommand(job: STimeJob): string[] {
  const cmd = [
    "openssl",
    "s_time",
    "-connect",
    `${HOST}:${job.port}`,
    `-${job.mode}`,
    "-tls1_2",
    "-time",
    String(job.durationS),
  ];
  return job.page ? [...cmd, "-www", job.page] : cmd;
}

export interface STimeResult {
  connections: number;
  bytes: number;
  /** Progress marks: 'r' a resumed session, '*' a full handshake. */
  resumed: number;
  full: number;
}

/**
 * Parses s_time's summary ("N connections in 1.23s; ... bytes read B") and its
 * progress marks. Throws when there is no summary (s_time gave up: "ERROR").
 */
export function parseSTime(text: string): STimeResult {
  const m = /^(\d+) connections in [\d.]+s;.*bytes read (\d+)/m.exec(text);
  if (!m) throw new Error(`s_time printed no summary:\n${text.slice(-600)}`);
  let resumed = 0;
  let full = 0;
  for (const line of text.split("\n")) {
    if (!/^[*rt3]+$/.test(line)) continue;
    for (const ch of line) {
      if (ch === "r") resumed++;
      else full++;
    }
  }
  return { connections: Number(m[1]), bytes: Number(m[2]), resumed, full };
}

export interface STimeGroup {
  result: STimeResult;
  /** From spawning the first s_time to the exit of the last. */
  wallS: number;
  /** CPU time of the s_time processes themselves (user + system), to tell them apart on the load core. */
  cpuS: number;
}

/**
 * Waits until the wall clock is early in the second's second half: s_time
 * stops at a whole-second boundary (it compares time(NULL)), so clients that
 * start together in the same second also stop together, after durationS + ~0.3 s.
 */
async function alignToSecond(): Promise<void> {
  const ms = Date.now() % 1000;
  await sleep(ms < 650 ? 650 - ms : 1650 - ms);
}

/** Runs `clients` s_time processes at once, pinned to `core`, and sums them. */
export async function runSTime(
  job: STimeJob,
  clients: number,
  core: string,
  logPrefix: string,
  before?: () => void,
): Promise<STimeGroup> {
  await alignToSecond();
  before?.();
  const t0 = performance.now();
  const children = Array.from({ length: clients }, (_, i) =>
    spawnLogged("s_time", [...pin(core), ...sTimeCommand(job)], `${logPrefix}-${i + 1}.log`),
  );
  const limitMs = (job.durationS + 30) * 1000;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const done = await Promise.race([
    Promise.all(children.map((c) => c.proc.exited)).then(() => true),
    new Promise<boolean>((r) => {
      timer = setTimeout(() => r(false), limitMs);
    }),
  ]);
  clearTimeout(timer);
  const wallS = (performance.now() - t0) / 1000;
  await Promise.all(children.map((c) => stopChild(c)));
  if (!done) throw new Error(`s_time did not finish within ${limitMs / 1000} s`);
  const sum: STimeResult = { connections: 0, bytes: 0, resumed: 0, full: 0 };
  let cpuUs = 0n;
  for (const c of children) {
    const text = await Bun.file(c.logPath).text();
    if (c.proc.exitCode !== 0) throw new Error(`s_time exited with ${c.proc.exitCode}:\n${text.slice(-600)}`);
    const r = parseSTime(text);
    sum.connections += r.connections;
    sum.bytes += r.bytes;
    sum.resumed += r.resumed;
    sum.full += r.full;
    cpuUs += c.proc.resourceUsage()?.cpuTime.total ?? 0n;
  }
  return { result: sum, wallS, cpuS: Number(cpuUs) / 1e6 };
}

export interface MeasureSetup {
  /** The proxy's processes, charged with CPU time; empty where no proxy runs. */
  proxyPids: number[];
  /** Other processes on the load core (backends), told apart from noise. */
  loadPids: number[];
  proxyCore: string;
  loadCore: string;
  clk: number;
  logPrefix: string;
}

/** One runSTime group with the proxy's CPU and both cores' noise sampled just around it. */
export async function measureSTime(job: STimeJob, clients: number, m: MeasureSetup): Promise<Measure> {
  let p0 = sample(m.proxyPids, m.proxyCore);
  let l0 = sample(m.loadPids, m.loadCore);
  const g = await runSTime(job, clients, m.loadCore, m.logPrefix, () => {
    p0 = sample(m.proxyPids, m.proxyCore);
    l0 = sample(m.loadPids, m.loadCore);
  });
  const p1 = sample(m.proxyPids, m.proxyCore);
  const l1 = sample(m.loadPids, m.loadCore);
  return {
    ...g.result,
    wallS: g.wallS,
    cpuS: m.proxyPids.length ? (p1.user - p0.user + p1.system - p0.system) / m.clk : null,
    noisePct: { proxy: othersPct(p0, p1, m.clk), load: othersPct(l0, l1, m.clk, g.cpuS) },
  };
}
