/** What every benchmark report states about the machine it ran on. */
import { readFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { capture } from "./procs.ts";

/** Above this share of a core taken by other processes, a run is flagged as noisy. */
export const NOISY_PCT = 10;

export interface Machine {
  date: string;
  nproc: number;
  cpuModel: string;
  kernel: string;
  loadAvg: number[];
  bun: string;
  clockTicks: number;
  command: string;
}

/** The machine, and the command line that ran `script` (e.g. "bench/run.ts"). */
export function machineInfo(script: string): Machine {
  const model = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? "unknown";
  return {
    date: new Date().toISOString(),
    nproc: Number(capture(["nproc"])) || cpus().length,
    cpuModel: model.trim(),
    kernel: capture(["uname", "-sr"]),
    loadAvg: loadavg().map((x) => Math.round(x * 100) / 100),
    bun: Bun.version,
    clockTicks: Number(capture(["getconf", "CLK_TCK"])) || 100,
    command: ["bun", script, ...Bun.argv.slice(2)].join(" "),
  };
}

/** Keeps the harness itself (probes, bookkeeping, Bun's own threads) off the proxy core. */
export function pinHarness(loadCore: string): void {
  if (Bun.which("taskset")) capture(["taskset", "-a", "-cp", loadCore, String(process.pid)]);
}

/** The peers that can run here, and why each of the others cannot. */
export function splitAvailable<P extends { name: string; unavailable(): string | null }>(
  peers: P[],
): { active: P[]; skipped: Record<string, string> } {
  const skipped: Record<string, string> = {};
  for (const p of peers) {
    const why = p.unavailable();
    if (why) skipped[p.name] = why;
  }
  return { active: peers.filter((p) => !skipped[p.name]), skipped };
}
