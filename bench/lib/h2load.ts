/**
 * One h2load run (nghttp2's HTTP/2 load generator), pinned to the load core,
 * and the parse of what it prints. h2load prints min/max/mean per request but
 * no percentiles, so p50/p90/p99 come from its --log-file (one line per
 * request: start time µs, status, µs to the end of the response).
 *
 * Returning clients: h2load sends the same headers on every request of every
 * connection, so a run is `connections` connections of one returning client,
 * each request presenting one cookie with `-H "cookie: NAME=VALUE"` — the
 * cookie the proxy issued to a first request (see returningCookie in net.ts).
 */
import { sleep, spawnLogged, stopChild } from "./procs.ts";
import { median } from "./report.ts";

export interface H2loadJob {
  url: string;
  durationS: number;
  connections: number;
  /** Concurrent streams per connection (h2load -m). */
  streams: number;
  threads: number;
  /** "NAME=VALUE" sent as a cookie field on every request, or null. */
  cookie: string | null;
  /** taskset CPU list, or null to run unpinned. */
  core: string | null;
  logPath: string;
  /** Per-request log for the percentiles; null: none (the warm-up). */
  requestLog: string | null;
}

export interface H2loadResult {
  /** Requests that got a response, any status. */
  requests: number;
  durationUs: number;
  /** The protocol ALPN picked ("h2"); a run that fell back to HTTP/1.1 measures the wrong thing. */
  protocol: string;
  latencyUs: { p50: number; p90: number; p99: number; max: number; mean: number };
  errors: { failed: number; errored: number; timeout: number; status4xx: number; status5xx: number };
}

export function h2loadCommand(job: H2loadJob): string[] {
  const cmd = [
    "h2load",
    `-t${job.threads}`,
    `-c${Math.max(job.connections, job.threads)}`,
    `-m${job.streams}`,
    `-D${job.durationS}`,
    ...(job.cookie ? ["-H", `cookie: ${job.cookie}`] : []),
    ...(job.requestLog ? [`--log-file=${job.requestLog}`] : []),
    job.url,
  ];
  return job.core === null ? cmd : ["taskset", "-c", job.core, ...cmd];
}

const num = (re: RegExp, text: string) => Number(re.exec(text)?.[1] ?? Number.NaN);

/** h2load's duration unit ("38.95ms", "121us", "1.2s") in µs. */
export function durationUs(s: string): number {
  const m = /^([\d.]+)(us|ms|s)$/.exec(s.trim());
  if (!m) return Number.NaN;
  return Number(m[1]) * (m[2] === "s" ? 1e6 : m[2] === "ms" ? 1e3 : 1);
}

/** The summary h2load prints at the end; latency percentiles are filled in by `withPercentiles`. */
export function parseH2loadOutput(text: string): H2loadResult {
  const finished = /^finished in ([\d.]+(?:us|ms|s)),/m.exec(text);
  const req =
    /^requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/m.exec(
      text,
    );
  if (!finished || !req) throw new Error(`h2load printed no summary:\n${text.slice(-1500)}`);
  const lat = /^time for request:\s+(\S+)\s+(\S+)\s+(\S+)/m.exec(text);
  return {
    requests: Number(req[2]),
    durationUs: durationUs(finished[1] as string),
    protocol: /^Application protocol: (\S+)/m.exec(text)?.[1] ?? "?",
    latencyUs: {
      p50: Number.NaN,
      p90: Number.NaN,
      p99: Number.NaN,
      max: lat ? durationUs(lat[2] as string) : Number.NaN,
      mean: lat ? durationUs(lat[3] as string) : Number.NaN,
    },
    errors: {
      failed: Number(req[4]),
      errored: Number(req[5]),
      timeout: Number(req[6]),
      status4xx: num(/^status codes: \d+ 2xx, \d+ 3xx, (\d+) 4xx/m, text),
      status5xx: num(/^status codes: \d+ 2xx, \d+ 3xx, \d+ 4xx, (\d+) 5xx/m, text),
    },
  };
}

/** p50/p90/p99 of the third column of h2load's --log-file (µs until the end of each response). */
export function logPercentiles(log: string): { p50: number; p90: number; p99: number } {
  const us: number[] = [];
  for (const line of log.split("\n")) {
    const tab = line.lastIndexOf("\t");
    if (tab > 0) us.push(Number(line.slice(tab + 1)));
  }
  if (us.length === 0) return { p50: Number.NaN, p90: Number.NaN, p99: Number.NaN };
  us.sort((a, b) => a - b);
  const at = (q: number) => us[Math.min(us.length - 1, Math.floor(q * us.length))] as number;
  return { p50: median(us), p90: at(0.9), p99: at(0.99) };
}

export const h2loadErrorCount = (r: H2loadResult) =>
  r.errors.failed + r.errors.errored + r.errors.timeout + r.errors.status4xx + r.errors.status5xx;

export interface H2loadRun {
  result: H2loadResult;
  /** h2load's own CPU time (user + system) in seconds. */
  cpuS: number;
}

/** Runs h2load to completion; a hung h2load is killed after its duration plus a margin. */
export async function runH2load(job: H2loadJob): Promise<H2loadRun> {
  const child = spawnLogged("h2load", h2loadCommand(job), job.logPath);
  const limitMs = (job.durationS + 20) * 1000;
  const finished = await Promise.race([child.proc.exited.then(() => true), sleep(limitMs).then(() => false)]);
  await stopChild(child);
  const text = await Bun.file(job.logPath).text();
  if (!finished) throw new Error(`h2load did not finish within ${limitMs / 1000} s`);
  if (child.proc.exitCode !== 0)
    throw new Error(`h2load exited with ${child.proc.exitCode}:\n${text.slice(-1500)}`);
  const cpuUs = child.proc.resourceUsage()?.cpuTime.total ?? 0n;
  const result = parseH2loadOutput(text);
  if (job.requestLog)
    result.latencyUs = { ...result.latencyUs, ...logPercentiles(await Bun.file(job.requestLog).text()) };
  return { result, cpuS: Number(cpuUs) / 1e6 };
}
