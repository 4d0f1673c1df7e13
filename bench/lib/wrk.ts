/**
 * One wrk run with bench/returning-client.lua, pinned to the load core, and the
 * parse of the "@@BENCH_JSON" line that the script's done() prints.
 */
import { join } from "node:path";
import { sleep, spawnLogged, stopChild } from "./procs.ts";

export interface WrkResult {
  requests: number;
  durationUs: number;
  bytes: number;
  latencyUs: { p50: number; p90: number; p99: number; max: number; mean: number };
  errors: { connect: number; read: number; write: number; status: number; timeout: number };
  clients: {
    threads: number;
    captured: number;
    synthesizedThreads: number;
    cookielessSent: number;
    setCookies: number;
  };
}

export interface WrkJob {
  url: string;
  durationS: number;
  connections: number;
  threads: number;
  clients: number;
  /** false: wrk sends Connection: close and opens a connection per request. */
  keepAlive?: boolean;
  /** taskset CPU list, or null to run unpinned. */
  core: string | null;
  logPath: string;
}

const MARK = "@@BENCH_JSON ";
export const LUA_SCRIPT = join(import.meta.dir, "..", "returning-client.lua");

export function wrkCommand(job: WrkJob): string[] {
  const wrk = [
    "wrk",
    `-t${job.threads}`,
    `-c${Math.max(job.connections, job.threads)}`,
    `-d${job.durationS}s`,
    "--latency",
    ...(job.keepAlive === false ? ["-H", "Connection: close"] : []),
    "-s",
    LUA_SCRIPT,
    job.url,
    "--",
    String(job.clients),
  ];
  return job.core === null ? wrk : ["taskset", "-c", job.core, ...wrk];
}

export function parseWrkOutput(text: string): WrkResult {
  const line = text.split("\n").find((l) => l.startsWith(MARK));
  if (!line) throw new Error(`wrk printed no ${MARK.trim()} line:\n${text.slice(-1500)}`);
  return JSON.parse(line.slice(MARK.length)) as WrkResult;
}

export const errorCount = (r: WrkResult) =>
  r.errors.connect + r.errors.read + r.errors.write + r.errors.status + r.errors.timeout;

export interface WrkRun {
  result: WrkResult;
  /** wrk's own CPU time (user + system) in seconds, to tell it apart from other load on its core. */
  cpuS: number;
}

/** Runs wrk to completion; a hung wrk is killed after its duration plus a margin. */
export async function runWrk(job: WrkJob): Promise<WrkRun> {
  const child = spawnLogged("wrk", wrkCommand(job), job.logPath);
  const limitMs = (job.durationS + 20) * 1000;
  const finished = await Promise.race([child.proc.exited.then(() => true), sleep(limitMs).then(() => false)]);
  await stopChild(child);
  const text = await Bun.file(job.logPath).text();
  if (!finished) throw new Error(`wrk did not finish within ${limitMs / 1000} s`);
  if (child.proc.exitCode !== 0)
    throw new Error(`wrk exited with ${child.proc.exitCode}:\n${text.slice(-1500)}`);
  const cpuUs = child.proc.resourceUsage()?.cpuTime.total ?? 0n;
  return { result: parseWrkOutput(text), cpuS: Number(cpuUs) / 1e6 };
}
