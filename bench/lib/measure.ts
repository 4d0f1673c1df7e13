/**
 * CPU accounting around one measured run: the proxy's own CPU time, and how
 * much of its core something else took (other user-space processes, or the
 * hypervisor's steal), which flags a run spoiled by a noisy machine.
 */
import { type CoreTimes, coreTimes, cpuTimes, rssKiB } from "./procs.ts";

export interface Sample {
  atMs: number;
  user: number;
  system: number;
  core: CoreTimes | null;
}

export interface Usage {
  /** CPU time (user + system) of the sampled processes, in seconds. */
  cpuS: number;
  wallS: number;
}

export function sample(pids: number[], core: string): Sample {
  let user = 0;
  let system = 0;
  for (const pid of pids) {
    const t = cpuTimes(pid);
    user += t.user;
    system += t.system;
  }
  return { atMs: performance.now(), user, system, core: coreTimes(core) };
}

export function usageBetween(a: Sample, b: Sample, clockTicks: number): Usage {
  return { cpuS: (b.user - a.user + b.system - a.system) / clockTicks, wallS: (b.atMs - a.atMs) / 1000 };
}

/**
 * CPU time of everything else on the sampled core, plus the hypervisor's
 * steal, in % of the wall time: how much of that core the run did not get.
 * `extraCpuS` is CPU time of our own processes not in the sample (wrk, which
 * has exited by the second sample). Null if the core is not one CPU.
 *
 * Whole busy time is compared, not user and system apart: the kernel splits
 * a process's time between user and system differently in /proc/<pid>/stat
 * and /proc/stat, and softirq work for the proxy's sockets counts as the
 * proxy's system time but as softirq on the core.
 */
export function othersPct(a: Sample, b: Sample, clockTicks: number, extraCpuS = 0): number | null {
  const wallS = (b.atMs - a.atMs) / 1000;
  if (!a.core || !b.core || wallS <= 0) return null;
  const ours = b.user - a.user + b.system - a.system + extraCpuS * clockTicks;
  const others = b.core.busy - a.core.busy - ours;
  return (Math.max(0, others) / clockTicks / wallS) * 100;
}

export const rssMiB = (pids: number[]) => pids.reduce((n, p) => n + rssKiB(p), 0) / 1024;
